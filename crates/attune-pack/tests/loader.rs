//! The pack loader on real directories: any pack loads by `ref`; a broken one names the file and
//! the field and yields nothing.

use std::path::{Path, PathBuf};

use attune_core::{OutputFormat, ParameterDelivery, Runtime};
use attune_pack::{load_pack_dir, ParamValidator};
use serde_json::json;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn pack(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        write(d.path(), rel, text);
    }
    d
}

fn repo_packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs")
}

#[test]
fn the_shipped_core_pack_loads() {
    let p = load_pack_dir(&repo_packs().join("core")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.meta.pack_ref.as_str(), "core");
    let refs: Vec<_> = p.actions.iter().map(|a| a.action_ref.to_string()).collect();
    for r in ["core.echo", "core.sleep", "core.noop", "core.local"] {
        assert!(refs.contains(&r.to_string()), "{r} missing from {refs:?}");
    }
    let noop = p.actions.iter().find(|a| a.action_ref.as_str() == "core.noop").unwrap();
    assert_eq!(noop.runtime, Runtime::Builtin);
    assert!(p.meta.dir.as_deref().unwrap().starts_with('/'), "the pack dir is absolute");
}

#[test]
fn any_pack_loads_with_short_or_full_refs() {
    let d = pack(&[
        ("pack.yaml", "ref: mypack\nversion: 1.2\n"),
        (
            "actions/hello.yaml",
            "ref: hello\nruntime: shell\nentry_point: hello.sh\noutput_format: json\nparameter_delivery: file\n\
             parameters:\n  type: object\n  properties:\n    who: {type: string}\n",
        ),
        ("actions/hello.sh", "echo '{}'\n"),
        ("actions/other.yml", "ref: mypack.other\nruntime: builtin\nentry_point: noop\n"),
        ("actions/README.md", "not an action"),
    ]);
    let p = load_pack_dir(d.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.meta.version, "1.2");
    assert_eq!(p.meta.label, "mypack");
    let hello = &p.actions[0];
    assert_eq!(hello.action_ref.as_str(), "mypack.hello");
    assert_eq!(hello.output_format, OutputFormat::Json);
    assert_eq!(hello.parameter_delivery, ParameterDelivery::File);
    assert_eq!(
        hello.parameters["additionalProperties"],
        json!(false),
        "unknown parameters refused by default"
    );
    assert_eq!(p.actions[1].action_ref.as_str(), "mypack.other");
    assert_eq!(p.actions[1].parameters["properties"], json!({}));
}

fn errors_of(files: &[(&str, &str)]) -> String {
    let d = pack(files);
    match load_pack_dir(d.path()) {
        Ok(p) => panic!("expected errors, loaded {} actions", p.actions.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_file_and_the_field() {
    let e = errors_of(&[
        ("pack.yaml", "ref: p\n"),
        ("actions/a.yaml", "ref: a\nruntime: rubby\nentry_point: x\n"),
        ("actions/b.yaml", "ref: b\nruntime: builtin\nentry_point: nope\ntimeout_seconds: soon\n"),
        ("actions/c.yaml", "ref: c\nruntime: shell\nentry_point: missing.sh\nbogus: 1\n"),
        ("actions/d.yaml", "ref: other.d\nruntime: builtin\nentry_point: noop\n"),
        (
            "actions/e.yaml",
            "runtime: builtin\nentry_point: noop\nparameters: {type: object, properties: {n: {type: wat}}}\n",
        ),
        ("actions/f.yaml", "ref: f\nruntime: shell\nentry_point: ../../etc/passwd\n"),
        ("actions/g.yaml", "ref: [g\n"),
        ("actions/h.yaml", "ref: h\nruntime: builtin\nentry_point: noop\nretry: {max_attempts: 0}\n"),
    ]);
    for expected in [
        "a.yaml: field `runtime`: unknown runtime \"rubby\"",
        "b.yaml: field `entry_point`: unknown builtin \"nope\"",
        "b.yaml: field `timeout_seconds`",
        "c.yaml: field `bogus`: unknown field",
        "c.yaml: field `entry_point`",
        "d.yaml: field `ref`: other.d belongs to pack other",
        "e.yaml: field `ref`: is required",
        "e.yaml: field `parameters`",
        "f.yaml: field `entry_point`: must be a relative path",
        "g.yaml: invalid YAML",
        "h.yaml: field `retry`: max_attempts must be at least 1",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn duplicate_keys_and_escaping_entry_points_are_errors() {
    let d = pack(&[("pack.yaml", "ref: p\nref: q\n"), ("actions/ok.sh", "true\n")]);
    let e = load_pack_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("pack.yaml: invalid YAML") && e.contains("duplicate"), "{e}");

    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", "root:x:0:0\n");
    let d = pack(&[
        ("pack.yaml", "ref: p\n"),
        ("actions/a.yaml", "ref: a\nruntime: shell\nentry_point: a.sh\nruntime: python\n"),
        ("actions/abs.yaml", "ref: abs\nruntime: native\nentry_point: /usr/bin/uname\n"),
        ("actions/link.yaml", "ref: link\nruntime: shell\nentry_point: link.sh\n"),
        ("actions/dir.yaml", "ref: dir\nruntime: native\nentry_point: bin/id\n"),
    ]);
    let actions = d.path().join("actions");
    std::os::unix::fs::symlink(outside.path().join("secret"), actions.join("link.sh")).unwrap();
    std::os::unix::fs::symlink("/usr/bin", actions.join("bin")).unwrap();
    let e = load_pack_dir(d.path()).unwrap_err().to_string();
    for expected in [
        "a.yaml: invalid YAML: duplicate entry with key \"runtime\"",
        "abs.yaml: field `entry_point`: must be a relative path",
        "link.yaml: field `entry_point`",
        "dir.yaml: field `entry_point`",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    assert_eq!(e.matches("outside the pack directory").count(), 2, "{e}");
}

#[test]
fn a_broken_pack_loads_nothing() {
    // One good action and one bad one: the result is an error, not a partial pack.
    let e = errors_of(&[
        ("pack.yaml", "ref: p\n"),
        ("actions/good.yaml", "ref: good\nruntime: builtin\nentry_point: noop\n"),
        ("actions/bad.yaml", "ref: bad\nruntime: builtin\n"),
    ]);
    assert!(e.contains("bad.yaml: field `entry_point`: is required"), "{e}");
    assert!(!e.contains("good.yaml"), "{e}");
}

#[test]
fn manifest_problems() {
    let d = tempfile::tempdir().unwrap();
    let e = load_pack_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("pack.yaml: not found"), "{e}");
    assert!(errors_of(&[("pack.yaml", "label: x\n")]).contains("pack.yaml: field `ref`: is required"));
    assert!(errors_of(&[("pack.yaml", "ref: Bad Name\n")])
        .contains("field `ref`: pack ref \"Bad Name\" is invalid"));
    assert!(errors_of(&[("pack.yaml", "- a\n")]).contains("expected a YAML mapping"));
    let dup = errors_of(&[
        ("pack.yaml", "ref: p\n"),
        ("actions/a.yaml", "ref: x\nruntime: builtin\nentry_point: noop\n"),
        ("actions/b.yaml", "ref: p.x\nruntime: builtin\nentry_point: noop\n"),
    ]);
    assert!(dup.contains("p.x is defined twice"), "{dup}");
}

#[test]
fn native_entry_points_must_be_executable() {
    let e = errors_of(&[
        ("pack.yaml", "ref: p\n"),
        ("actions/n.yaml", "ref: n\nruntime: native\nentry_point: prog\n"),
        ("actions/prog", "not executable"),
    ]);
    assert!(e.contains("is not executable"), "{e}");
}

#[test]
fn parameter_validation_names_parameters() {
    let p = load_pack_dir(&repo_packs().join("core")).unwrap();
    let echo = p.actions.iter().find(|a| a.action_ref.as_str() == "core.echo").unwrap();
    let v = ParamValidator::compile(&echo.parameters).unwrap();
    assert!(v.validate(&json!({"message": "hi"})).is_ok());
    let errs = v.validate(&json!({"mesage": "hi"})).unwrap_err().join("\n");
    assert!(errs.contains("mesage") && errs.contains("message"), "{errs}");
}

#[test]
fn rules_and_trigger_types_load_and_their_mistakes_are_named() {
    let p = load_pack_dir(&repo_packs().join("examples")).unwrap_or_else(|e| panic!("{e}"));
    let rules: Vec<_> = p.rules.iter().map(|r| r.rule_ref.to_string()).collect();
    assert!(rules.contains(&"examples.on_alert".to_string()), "{rules:?}");
    assert_eq!(p.triggers[0].type_ref.as_str(), "examples.disk_alert");
    let every = p.rules.iter().find(|r| r.rule_ref.as_str() == "examples.every_two_seconds").unwrap();
    assert!(!every.enabled, "shipped disabled");

    let base = ("pack.yaml", "ref: ops\n");
    let rule = |body: &str| errors_of(&[base, ("rules/r.yaml", body)]);
    let action = "action: { ref: core.echo, parameters: { message: hi } }\n";
    for (body, field, says) in [
        (format!("ref: r\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\ncriteria:\n  payload.x: {{ type: almost, pattern: 1 }}\n{action}"), "criteria.payload.x", "unknown variant"),
        (format!("ref: r\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\ncriteria:\n  payload.x: {{ type: matchregex, pattern: '(' }}\n{action}"), "criteria.payload.x", "regex"),
        (format!("ref: r\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\ncriteria:\n  status: {{ type: equals, pattern: 1 }}\n{action}"), "criteria.status", "starting with `payload`"),
        (format!("ref: r\ntrigger: {{ type: core.interval, parameters: {{ seconds: 0 }} }}\n{action}"), "trigger.parameters", "minimum"),
        (format!("ref: r\ntrigger: {{ type: core.datetime, parameters: {{ at: tomorrow }} }}\n{action}"), "trigger.parameters.at", "RFC 3339"),
        (format!("ref: r\ntrigger: {{ type: ops.nothing }}\n{action}"), "trigger.type", "unknown trigger type"),
        (format!("ref: r\ntrigger: {{ type: core.cron, parameters: {{ expression: '61 * * * *' }} }}\n{action}"), "trigger.parameters", "not a cron expression"),
        (format!("ref: r\ntrigger: {{ type: core.cron, parameters: {{ expression: '0 9 * * *', timezone: Mars/Base }} }}\n{action}"), "trigger.parameters", "not a time zone"),
        (format!("ref: r\ntrigger: {{ type: core.webhook, paramters: {{ name: a }} }}\n{action}"), "trigger", "unknown field"),
        ("ref: r\ntrigger: { type: core.webhook, parameters: { name: a } }\n".to_string(), "action", "is required"),
        ("ref: r\ntrigger: { type: core.webhook, parameters: { name: a } }\naction: { ref: core.echo, parameters: { message: \"{{ event.x ) }}\" } }\n".to_string(), "action.parameters.message", "syntax error"),
        (format!("ref: r\nenabled: maybe\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\n{action}"), "enabled", "true or false"),
        (format!("ref: other.r\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\n{action}"), "ref", "belongs to pack other"),
    ] {
        let e = rule(&body);
        assert!(e.contains("rules/r.yaml") && e.contains(&format!("field `{field}`")) && e.contains(says), "{field}: {e}");
    }
    let e = errors_of(&[base, ("triggers/t.yaml", "ref: core_thing\npayload: { type: 3 }\n")]);
    assert!(e.contains("triggers/t.yaml: field `payload`"), "{e}");
    let twice = format!("ref: r\ntrigger: {{ type: core.webhook, parameters: {{ name: a }} }}\n{action}");
    let e = errors_of(&[base, ("rules/a.yaml", &twice), ("rules/b.yaml", &twice)]);
    assert!(e.contains("rules/b.yaml: field `ref`: ops.r is defined twice in this pack"), "{e}");
    let e = errors_of(&[base, ("triggers/t.yaml", "ref: core.interval\n")]);
    assert!(e.contains("triggers/t.yaml: field `ref`") && e.contains("belongs to pack core"), "{e}");
}

#[test]
fn sensors_load_and_their_mistakes_are_named() {
    let p = load_pack_dir(&repo_packs().join("examples")).unwrap_or_else(|e| panic!("{e}"));
    let s = p.sensors.iter().find(|s| s.sensor_ref.as_str() == "examples.disk_watch").unwrap();
    assert!(!s.enabled, "shipped disabled");
    assert_eq!(s.trigger_types[0].as_str(), "examples.disk_alert");
    assert!(s.pack_dir.is_some());

    let base = [
        ("pack.yaml", "ref: ops\n"),
        ("triggers/t.yaml", "ref: seen\n"),
        ("sensors/watch.sh", "while true; do sleep 1; done\n"),
    ];
    let sensor = |body: &str| {
        let mut files = base.to_vec();
        files.push(("sensors/s.yaml", body));
        errors_of(&files)
    };
    for (body, field, says) in [
        (
            "ref: s\nruntime: shell\nentry_point: gone.sh\ntrigger_types: [ops.seen]\n",
            "entry_point",
            "does not exist",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: ../pack.yaml\ntrigger_types: [ops.seen]\n",
            "entry_point",
            "inside the pack's sensors/",
        ),
        (
            "ref: s\nruntime: builtin\nentry_point: watch.sh\ntrigger_types: [ops.seen]\n",
            "runtime",
            "a sensor is a program",
        ),
        (
            "ref: s\nruntime: workflow\nentry_point: watch.sh\ntrigger_types: [ops.seen]\n",
            "runtime",
            "a sensor is a program",
        ),
        (
            "ref: s\nruntime: cobol\nentry_point: watch.sh\ntrigger_types: [ops.seen]\n",
            "runtime",
            "unknown runtime",
        ),
        ("ref: s\nruntime: shell\nentry_point: watch.sh\n", "trigger_types", "is required"),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: []\n",
            "trigger_types",
            "at least one",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: [ops.nothing]\n",
            "trigger_types",
            "unknown trigger type ops.nothing",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: [core.webhook]\n",
            "trigger_types",
            "built-in",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: ops.seen\n",
            "trigger_types",
            "a list of trigger type refs",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: [ops.seen]\nparameters: 3\n",
            "parameters",
            "must be a mapping",
        ),
        (
            "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: [ops.seen]\nenabled: yes please\n",
            "enabled",
            "true or false",
        ),
        (
            "ref: s\nruntime: shell\nentrypoint: watch.sh\ntrigger_types: [ops.seen]\n",
            "entrypoint",
            "unknown field",
        ),
    ] {
        let e = sensor(body);
        assert!(
            e.contains("sensors/s.yaml") && e.contains(&format!("field `{field}`")) && e.contains(says),
            "{field}: {e}"
        );
    }
    let ok = "ref: s\nruntime: shell\nentry_point: watch.sh\ntrigger_types: [ops.seen, other.thing]\n";
    let mut files = base.to_vec();
    files.push(("sensors/s.yaml", ok));
    let dir = pack(&files);
    let p = load_pack_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.sensors[0].sensor_ref.as_str(),
        "ops.s",
        "another pack's trigger type is the server's to check"
    );
}

#[test]
fn queue_policies_of_an_action_load_and_their_mistakes_are_named() {
    let base = ("pack.yaml", "ref: ops\n");
    let script = ("actions/a.sh", "echo hi\n");
    let ok = "ref: a\nruntime: shell\nentry_point: a.sh\nscheduled_timeout_seconds: 2\nworker_selector: { region: eu, gpu: true, slots: 4 }\n";
    let dir = pack(&[base, script, ("actions/a.yaml", ok)]);
    let p = load_pack_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let a = &p.actions[0];
    assert_eq!(a.scheduled_timeout_seconds, Some(2));
    let sel: Vec<(&str, &str)> = a.worker_selector.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(sel, [("gpu", "true"), ("region", "eu"), ("slots", "4")], "values as text");
    let p = load_pack_dir(&repo_packs().join("examples")).unwrap_or_else(|e| panic!("{e}"));
    let deploy = p.actions.iter().find(|a| a.action_ref.as_str() == "examples.deploy").unwrap();
    let c = deploy.concurrency.as_ref().unwrap();
    assert_eq!((c.limit, c.key.as_deref()), (1, Some("{{ parameters.environment }}")));
    for (extra, field, says) in [
        ("scheduled_timeout_seconds: 0\n", "scheduled_timeout_seconds", "between 1 and"),
        ("scheduled_timeout_seconds: soon\n", "scheduled_timeout_seconds", "whole number"),
        ("worker_selector: [eu]\n", "worker_selector", "mapping"),
        ("worker_selector: { \"a b\": x }\n", "worker_selector", "label name"),
        ("worker_selector: { region: [eu] }\n", "worker_selector", "label region"),
        ("concurrency: { limit: 0 }\n", "concurrency.limit", "between 1 and"),
        ("concurrency: { limit: 1, on_limit: drop }\n", "concurrency", "unknown variant"),
        ("concurrency: { limit: 1, per: x }\n", "concurrency", "unknown field"),
        ("concurrency: { limit: 1, key: \"{{ parameters.x \" }\n", "concurrency.key", "syntax"),
        ("concurrency: { limit: 1, key: prod }\n", "concurrency.key", "must use the parameters"),
        ("rate_limit: { per_second: 0 }\n", "rate_limit.per_second", "more than 0"),
        ("rate_limit: { per_second: 5, burst: 0 }\n", "rate_limit.burst", "between 1 and"),
        ("rate_limit: { per_second: fast }\n", "rate_limit", "per_second"),
        ("rate_limit: { per_second: 5, key: api }\n", "rate_limit.key", "must use the parameters"),
        ("priority: 500\n", "priority", "between -100 and 100"),
        ("priority: high\n", "priority", "whole number"),
    ] {
        let body = format!("ref: a\nruntime: shell\nentry_point: a.sh\n{extra}");
        let e = errors_of(&[base, script, ("actions/a.yaml", &body)]);
        assert!(e.contains(&format!("field `{field}`")) && e.contains(says), "{extra}: {e}");
    }
}
