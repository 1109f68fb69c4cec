//! Deterministic tests: a definition, a state, and inputs fed in by hand.

use serde_json::{json, Value};

use super::*;

fn def(yaml: &str) -> Definition {
    Definition::parse(&yaml_to_json(yaml)).unwrap_or_else(|e| panic!("{e}"))
}

fn def_err(yaml: &str) -> DefinitionError {
    Definition::parse(&yaml_to_json(yaml)).expect_err("refused")
}

// Tests write definitions as JSON-compatible YAML flow text; a tiny converter keeps this crate
// free of a YAML dependency: the inputs below are JSON.
fn yaml_to_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("test definition is not JSON: {e}\n{s}"))
}

fn keys(s: &Step) -> Vec<&str> {
    s.starts.iter().map(|s| s.key.as_str()).collect()
}

fn ok(key: &str, result: Value) -> Input {
    Input::Ended { key: key.into(), succeeded: true, result }
}

fn fail(key: &str) -> Input {
    Input::Ended { key: key.into(), succeeded: false, result: json!({"error": "boom"}) }
}

const EXAMPLE: &str = r#"{
  "version": 1,
  "vars": {"hosts": []},
  "tasks": {
    "list_hosts": {"action": "examples.list", "next": [
      {"when": "{{ succeeded() }}", "publish": {"hosts": "{{ result().hosts }}"}, "do": ["check_each"]},
      {"when": "{{ failed() }}", "do": ["report"]}]},
    "check_each": {"with": {"items": "{{ ctx.hosts }}", "concurrency": 2}, "action": "core.local",
      "input": {"cmd": "ping -c1 {{ item() }}"}, "retry": {"count": 2, "delay": 1}, "timeout": 30,
      "next": [{"do": ["approve"]}]},
    "approve": {"action": "core.ask", "input": {"schema": {"type": "object"}},
      "next": [{"when": "{{ result().ok }}", "do": ["report"]}]},
    "report": {"join": "all", "action": "core.echo", "input": {"message": "{{ ctx.hosts | length }} hosts"}}
  },
  "output": {"count": "{{ ctx.hosts | length }}"}
}"#;

#[test]
fn the_example_runs_through_items_inquiry_and_join() {
    let d = def(EXAMPLE);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({}) });
    assert_eq!(keys(&s), ["list_hosts/1"]);
    let s = step(&d, &mut st, ok("list_hosts/1", json!({"hosts": ["a", "b", "c"]})));
    assert_eq!(keys(&s), ["check_each/1/0", "check_each/1/1"], "concurrency 2");
    assert_eq!(s.starts[0].input, json!({"cmd": "ping -c1 a"}));
    assert_eq!(s.starts[0].retry, Some(Retry { count: 2, delay: 1 }));
    assert_eq!(s.starts[0].timeout, Some(30));
    let s = step(&d, &mut st, ok("check_each/1/1", json!("b up")));
    assert_eq!(keys(&s), ["check_each/1/2"], "the next item takes the free slot");
    let s = step(&d, &mut st, ok("check_each/1/0", json!("a up")));
    assert!(s.starts.is_empty());
    let s = step(&d, &mut st, ok("check_each/1/2", json!("c up")));
    assert_eq!(keys(&s), ["approve/1"]);
    let s = step(&d, &mut st, ok("approve/1", json!({"ok": true})));
    assert_eq!(keys(&s), ["report/1"], "join all: list_hosts took the other path and can no longer arrive");
    assert_eq!(s.starts[0].input, json!({"message": "3 hosts"}));
    let s = step(&d, &mut st, ok("report/1", json!("3 hosts")));
    let f = s.finish.expect("over");
    assert_eq!(f.outcome, Outcome::Succeeded);
    assert_eq!(f.output, Some(json!({"count": 3})), "a single expression keeps its type");
    let again = step(&d, &mut st, ok("report/1", json!("3 hosts")));
    assert!(again.ignored && again.finish.is_none(), "a repeated completion changes nothing");
}

#[test]
fn an_empty_with_proceeds_st2_4954() {
    let d = def(EXAMPLE);
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({}) });
    let s = step(&d, &mut st, ok("list_hosts/1", json!({"hosts": []})));
    assert_eq!(keys(&s), ["approve/1"], "the empty with ended at once and its transition ran");
}

#[test]
fn a_failing_item_ends_the_workflow_by_its_transitions_st2_4617() {
    let d = def(r#"{"version": 1, "tasks": {
        "each": {"with": {"items": [1, 2, 3]}, "action": "core.noop", "next": [
           {"when": "{{ failed() }}", "publish": {"bad": "{{ result() | length }}"}, "do": ["cleanup"]}]},
        "cleanup": {"action": "core.noop"}},
        "output": {"bad": "{{ ctx.bad }}"}}"#);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({}) });
    assert_eq!(keys(&s), ["each/1/0", "each/1/1", "each/1/2"]);
    step(&d, &mut st, ok("each/1/0", json!(1)));
    step(&d, &mut st, fail("each/1/1"));
    let s = step(&d, &mut st, ok("each/1/2", json!(3)));
    assert_eq!(keys(&s), ["cleanup/1"], "the failure was handled by a transition");
    let s = step(&d, &mut st, ok("cleanup/1", Value::Null));
    assert_eq!(s.finish.unwrap().output, Some(json!({"bad": 3})));
}

#[test]
fn an_unhandled_failure_lets_running_branches_finish_then_fails() {
    let d = def(r#"{"version": 1, "tasks": {
        "a": {"action": "core.noop", "next": ["a2"]}, "a2": {"action": "core.noop"},
        "b": {"action": "core.noop", "next": [{"when": "{{ succeeded() }}", "do": ["b2"]}]},
        "b2": {"action": "core.noop"}}}"#);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({}) });
    assert_eq!(keys(&s), ["a/1", "b/1"]);
    let s = step(&d, &mut st, fail("b/1"));
    assert!(s.starts.is_empty() && s.finish.is_none(), "a is still running");
    let s = step(&d, &mut st, ok("a/1", Value::Null));
    assert!(s.starts.is_empty(), "nothing new starts after an unhandled failure");
    let f = s.finish.expect("over");
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(f.error.unwrap()["error"], "task b failed and no transition handles it");
}

#[test]
fn cancel_stops_new_work_and_ends_when_children_have() {
    let d = def(EXAMPLE);
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({}) });
    step(&d, &mut st, ok("list_hosts/1", json!({"hosts": ["a", "b", "c"]})));
    let s = step(&d, &mut st, Input::Cancel);
    assert!(s.cancel_children && s.finish.is_none());
    let s = step(
        &d,
        &mut st,
        Input::Ended { key: "check_each/1/0".into(), succeeded: false, result: Value::Null },
    );
    assert!(s.starts.is_empty(), "no further item starts");
    let s = step(&d, &mut st, ok("check_each/1/1", Value::Null));
    assert_eq!(s.finish.unwrap().outcome, Outcome::Canceled);
}

#[test]
fn pause_holds_starts_until_resume() {
    let d =
        def(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "next": ["b"]}, "b": {"action": "x.y"}}}"#);
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({}) });
    step(&d, &mut st, Input::Pause);
    let s = step(&d, &mut st, ok("a/1", Value::Null));
    assert!(s.starts.is_empty() && s.finish.is_none(), "held while paused");
    let s = step(&d, &mut st, Input::Resume);
    assert_eq!(keys(&s), ["b/1"]);
}

#[test]
fn a_join_reached_from_inside_a_loop() {
    // `poll` loops until ready, then both it and `other` lead to `done` (join all).
    let d = def(r#"{"version": 1, "tasks": {
        "poll": {"action": "x.poll", "next": [
            {"when": "{{ not result().ready }}", "do": ["poll"]},
            {"when": "{{ result().ready }}", "do": ["done"]}]},
        "other": {"action": "x.y", "next": ["done"]},
        "done": {"join": "all", "action": "x.y"}}}"#);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({}) });
    assert_eq!(keys(&s), ["other/1", "poll/1"]);
    let s = step(&d, &mut st, ok("other/1", Value::Null));
    assert!(s.starts.is_empty(), "poll may still arrive");
    let s = step(&d, &mut st, ok("poll/1", json!({"ready": false})));
    assert_eq!(keys(&s), ["poll/2"]);
    let s = step(&d, &mut st, ok("poll/2", json!({"ready": true})));
    assert_eq!(keys(&s), ["done/1"], "the join fires once, after the loop");
    assert!(step(&d, &mut st, ok("done/1", Value::Null)).finish.is_some());
}

#[test]
fn join_count_and_publish_types() {
    let d = def(r#"{"version": 1, "vars": {"n": "{{ ctx.start + 1 }}"}, "tasks": {
        "a": {"action": "x.y", "next": [{"publish": {"list": "{{ result() }}", "text": "n={{ ctx.n }}"}, "do": ["c"]}]},
        "b": {"action": "x.y", "next": ["c"]},
        "c": {"join": 1, "action": "x.y", "input": {"n": "{{ ctx.n }}", "list": "{{ ctx.list }}"}}}}"#);
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({"start": 41}) });
    let s = step(&d, &mut st, ok("a/1", json!([1, 2])));
    assert_eq!(keys(&s), ["c/1"], "join 1 starts on the first arrival");
    assert_eq!(s.starts[0].input, json!({"n": 42, "list": [1, 2]}));
    assert_eq!(st.ctx["text"], "n=42");
}

#[test]
fn inputs_that_cannot_render_fail_the_task_and_keys_are_left_for_hand_out() {
    let d = def(r#"{"version": 1, "tasks": {
        "a": {"action": "x.y", "input": {"x": "{{ ctx.missing }}"}},
        "b": {"action": "x.y", "input": {"pw": "{{ key('db') }}", "t": "{{ ctx.t }}"}}}}"#);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({"t": "{{ key('db') }}"}) });
    assert_eq!(keys(&s), ["b/1"], "a failed at once");
    assert_eq!(s.starts[0].input["pw"], "{{ key('db') }}");
    assert_ne!(s.starts[0].input["t"], "{{ key('db') }}", "data from ctx can never name a key");
    let f = step(&d, &mut st, ok("b/1", Value::Null)).finish.unwrap();
    assert_eq!(f.outcome, Outcome::Failed);
    assert!(f.error.unwrap()["failures"][0]["result"]["error"].as_str().unwrap().contains("missing"));
}

#[test]
fn a_large_result_passes_through_publish_st2_3600() {
    let d = def(
        r#"{"version": 1, "tasks": {"a": {"action": "x.y", "next": [{"publish": {"big": "{{ result() }}"}}]}},
           "output": {"len": "{{ ctx.big | length }}"}}"#,
    );
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({}) });
    let big = "x".repeat(4 * 1024 * 1024);
    let f = step(&d, &mut st, ok("a/1", json!(big))).finish.unwrap();
    assert_eq!(f.output, Some(json!({"len": 4 * 1024 * 1024})));
}

#[test]
fn definitions_are_checked_with_task_and_field() {
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "next": [{"do": ["nope"]}]}}}"#);
    assert_eq!((e.task.as_deref(), e.field.as_str()), (Some("a"), "next[0].do"));
    assert!(e.message.contains("unknown task \"nope\""), "{e}");
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "input": {"m": "{{ ctx.a ) }}"}}}}"#);
    assert_eq!((e.task.as_deref(), e.field.as_str()), (Some("a"), "input.m"));
    let e = def_err(
        r#"{"version": 1, "tasks": {"s": {"action": "x.y", "next": ["a"]},
            "a": {"action": "x.y", "next": ["b"]}, "b": {"action": "x.y", "next": ["a"]}}}"#,
    );
    assert!(e.message.contains("a → b → a") && e.message.contains("when"), "{e}");
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "wiht": {}}}}"#);
    assert!(e.message.contains("unknown field `wiht`"), "{e}");
    let e = def_err(r#"{"version": 2, "tasks": {"a": {"action": "x.y"}}}"#);
    assert_eq!(e.field, "version");
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "join": "all"}}}"#);
    assert_eq!(e.field, "join");
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "noref"}}}"#);
    assert_eq!(e.field, "action");
    let e = def_err(r#"{"version": 1, "tasks": {"a": {"action": "x.y", "with": {"items": 3}}}}"#);
    assert_eq!(e.field, "with.items");
    assert_eq!(parse_key("t/2/17"), Some(("t", 2, Some(17))));
    assert_eq!(parse_key("t/x"), None);
}

#[test]
fn a_loop_of_tasks_that_run_nothing_stops_instead_of_spinning() {
    let d = def(r#"{"version": 1, "tasks": {"s": {"action": "x.y", "next": ["l"]},
        "l": {"with": {"items": []}, "action": "x.y", "next": [{"when": "{{ true }}", "do": ["l"]}]}}}"#);
    let mut st = State::default();
    step(&d, &mut st, Input::Start { parameters: json!({}) });
    let f = step(&d, &mut st, ok("s/1", Value::Null)).finish.unwrap();
    assert_eq!(f.outcome, Outcome::Failed);
    assert!(f.error.unwrap()["error"].as_str().unwrap().contains("loop"));
}

#[test]
fn what_the_state_waits_for_and_a_templated_concurrency() {
    let d = def(r#"{"version": 1, "tasks": {
        "one": {"action": "x.y"},
        "many": {"with": {"items": [1, 2, 3], "concurrency": "{{ ctx.c }}"}, "action": "x.y"}}}"#);
    let mut st = State::default();
    let s = step(&d, &mut st, Input::Start { parameters: json!({"c": 2}) });
    assert_eq!(keys(&s), ["many/1/0", "many/1/1", "one/1"]);
    assert_eq!(waiting_for(&st), ["many/1/0", "many/1/1", "one/1"]);
    step(&d, &mut st, ok("many/1/0", Value::Null));
    assert_eq!(waiting_for(&st), ["many/1/1", "many/1/2", "one/1"]);
    let again = step(&d, &mut st, ok("many/1/0", Value::Null));
    assert!(again.ignored && again.starts.is_empty(), "an item's end counts once");
    let bad = def(
        r#"{"version": 1, "tasks": {"m": {"with": {"items": [1], "concurrency": "{{ ctx.c }}"}, "action": "x.y"}}}"#,
    );
    let mut st = State::default();
    let f = step(&bad, &mut st, Input::Start { parameters: json!({"c": 0}) }).finish.unwrap();
    assert_eq!(f.outcome, Outcome::Failed, "a concurrency of 0 fails the task");
    let s = step(&d, &mut State::default(), Input::Check);
    assert!(s.finish.is_some(), "a state that never started has nothing to wait for");
}
