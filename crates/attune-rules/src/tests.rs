use attune_core::{
    rules::{Criterion, Op, Overlap, Rule, RuleAction, TriggerEvent, TriggerSpec},
    ActionRef, PackRef, Timestamp,
};
use serde_json::{json, Value};

use super::*;

fn event(payload: Value) -> TriggerEvent {
    TriggerEvent {
        id: uuid_like(),
        trigger: ActionRef::parse("core.webhook").unwrap(),
        trigger_parameters: json!({"name": "alerts"}),
        payload,
        source: "webhook:alerts".into(),
        late: false,
        created_at: Timestamp(0),
        processed_at: None,
    }
}

fn uuid_like() -> uuid::Uuid {
    uuid::Uuid::nil()
}

fn rule(criteria: Vec<Criterion>, parameters: Value) -> Rule {
    Rule {
        rule_ref: ActionRef::parse("ops.restart").unwrap(),
        pack: PackRef::parse("ops").unwrap(),
        description: String::new(),
        enabled: true,
        trigger: TriggerSpec {
            type_ref: ActionRef::parse("core.webhook").unwrap(),
            parameters: json!({"name": "alerts"}),
        },
        criteria,
        action: RuleAction { action_ref: ActionRef::parse("core.local").unwrap(), parameters },
        overlap: Overlap::Allow,
        pack_config: None,
    }
}

fn crit(key: &str, op: Op, pattern: Value) -> Criterion {
    Criterion { key: key.into(), op, pattern }
}

/// Every operator, on values that hold and values that do not, absent keys included.
#[test]
fn every_operator_against_values_that_hold_and_that_do_not() {
    let payload = json!({
        "status": "Failed", "attempts": 3, "text_num": "3", "ratio": 0.5,
        "tags": ["a", "B"], "labels": {"env": "prod"}, "host": "web-01.example.com", "ok": true,
    });
    let table: Vec<(&str, Op, Value, bool)> = vec![
        ("payload.status", Op::Equals, json!("Failed"), true),
        ("payload.status", Op::Equals, json!("failed"), false),
        ("payload.attempts", Op::Equals, json!(3.0), true),
        ("payload.text_num", Op::Equals, json!(3), true),
        ("payload.ok", Op::Equals, json!("true"), true),
        ("payload.missing", Op::Equals, json!(null), false),
        ("payload.status", Op::Nequals, json!("ok"), true),
        ("payload.status", Op::Nequals, json!("Failed"), false),
        ("payload.status", Op::Iequals, json!("FAILED"), true),
        ("payload.status", Op::Iequals, json!("ok"), false),
        ("payload.attempts", Op::Iequals, json!("3"), false),
        ("payload.attempts", Op::Lessthan, json!(4), true),
        ("payload.attempts", Op::Lessthan, json!(3), false),
        ("payload.text_num", Op::Lessthan, json!(10), true),
        ("payload.status", Op::Lessthan, json!(10), false),
        ("payload.attempts", Op::Greaterthan, json!(2), true),
        ("payload.ratio", Op::Greaterthan, json!(0.5), false),
        ("payload.host", Op::Contains, json!("example"), true),
        ("payload.tags", Op::Contains, json!("a"), true),
        ("payload.tags", Op::Contains, json!("b"), false),
        ("payload.labels", Op::Contains, json!("env"), true),
        ("payload.host", Op::Contains, json!("EXAMPLE"), false),
        ("payload.host", Op::Ncontains, json!("db"), true),
        ("payload.tags", Op::Ncontains, json!("a"), false),
        ("payload.missing", Op::Ncontains, json!("a"), false),
        ("payload.host", Op::Icontains, json!("EXAMPLE"), true),
        ("payload.tags", Op::Icontains, json!("b"), true),
        ("payload.tags", Op::Icontains, json!("c"), false),
        ("payload.host", Op::Startswith, json!("web-"), true),
        ("payload.host", Op::Startswith, json!("db-"), false),
        ("payload.host", Op::Endswith, json!(".com"), true),
        ("payload.attempts", Op::Endswith, json!("3"), false),
        ("payload.host", Op::Matchregex, json!(r"^web-\d+\."), true),
        ("payload.host", Op::Matchregex, json!(r"^db"), false),
        ("payload.attempts", Op::Matchregex, json!("3"), false),
        ("payload.status", Op::In, json!(["Failed", "Crashed"]), true),
        ("payload.attempts", Op::In, json!([1, 2]), false),
        ("payload.status", Op::Nin, json!(["ok"]), true),
        ("payload.attempts", Op::Nin, json!([3]), false),
        ("payload.labels.env", Op::Exists, json!(null), true),
        ("payload.labels.zone", Op::Exists, json!(null), false),
        ("payload.labels.zone", Op::Nexists, json!(null), true),
        ("payload.status", Op::Nexists, json!(null), false),
        ("payload.tags.1", Op::Equals, json!("B"), true),
        ("trigger.name", Op::Equals, json!("alerts"), true),
    ];
    let covered: std::collections::BTreeSet<&str> = table.iter().map(|(_, op, _, _)| op.as_str()).collect();
    assert_eq!(covered.len(), Op::ALL.len(), "every operator is in the table");
    for (key, op, pattern, want) in table {
        let r = rule(vec![crit(key, op, pattern.clone())], json!({}));
        let e = evaluate(&r, &event(payload.clone()));
        assert_eq!(e.checks[0].holds, want, "{key} {} {pattern}: {:?}", op.as_str(), e.checks[0]);
        assert_eq!(e.matched(), want);
        assert_eq!(e.first_failure().is_none(), want);
    }
}

#[test]
fn all_criteria_must_hold_and_the_first_failure_is_named() {
    let r = rule(
        vec![
            crit("payload.status", Op::Equals, json!("failed")),
            crit("payload.attempts", Op::Greaterthan, json!(2)),
            crit("payload.service", Op::Exists, json!(null)),
        ],
        json!({"cmd": "systemctl restart {{ event.payload.service }}"}),
    );
    let (ev, d) = decide(&r, &event(json!({"status": "failed", "attempts": 1, "service": "web"})));
    assert_eq!(ev.checks.iter().map(|c| c.holds).collect::<Vec<_>>(), vec![true, false, true]);
    match d {
        Decision::NotMatched(why) => {
            assert!(why.starts_with("payload.attempts greaterthan 2: found 1"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let (_, d) = decide(&r, &event(json!({"status": "failed", "attempts": 5, "service": "web"})));
    assert_eq!(d, Decision::Run(json!({"cmd": "systemctl restart web"})));
    let none =
        rule(vec![], json!({"n": "{{ event.payload.n }}", "who": "{{ rule.ref }} {{ event.source }}"}));
    let (_, d) = decide(&none, &event(json!({"n": [1, 2]})));
    assert_eq!(
        d,
        Decision::Run(json!({"n": [1, 2], "who": "ops.restart webhook:alerts"})),
        "no criteria: matches"
    );
    let (_, d) = decide(&none, &event(json!({})));
    match d {
        Decision::Failed(why) => assert!(why.contains("action.parameters.n"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rule_concerns_only_events_of_its_trigger_instance() {
    let r = rule(vec![], json!({}));
    let mut e = event(json!({}));
    assert!(concerns(&r, &e));
    e.trigger_parameters = json!({"name": "other"});
    assert!(!concerns(&r, &e));
    e.trigger_parameters = json!({"name": "alerts", "extra": 1});
    assert!(concerns(&r, &e), "the rule's parameters are a subset of the event's");
    e.trigger = ActionRef::parse("core.interval").unwrap();
    assert!(!concerns(&r, &e));
}

#[test]
fn criteria_are_checked_when_a_rule_loads() {
    let bad = [
        crit("status", Op::Equals, json!(1)),
        crit("payload..x", Op::Equals, json!(1)),
        crit("payload.x", Op::Matchregex, json!("(")),
        crit("payload.x", Op::Matchregex, json!(3)),
        crit("payload.x", Op::In, json!("a")),
        crit("payload.x", Op::Lessthan, json!("soon")),
        crit("payload.x", Op::Startswith, json!(1)),
    ];
    for c in bad {
        assert!(check_criterion(&c).is_err(), "{c:?}");
    }
    assert!(check_criterion(&crit("payload.x", Op::Lessthan, json!("5"))).is_ok());
    assert!(check_criterion(&crit("trigger.name", Op::Exists, json!(null))).is_ok());
}
