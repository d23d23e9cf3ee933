//! The CRDs' CEL rules (`x-kubernetes-validations`), evaluated as the API
//! server evaluates them at apply time: no cluster runs here, and the
//! stand-in API server does not evaluate CEL. Each rule must compile and
//! answer as its message says, on values that keep it and values that break
//! it; a rule without cases here fails the test, so none is added untested.

use cel::{Context, Program, Value};
use serde_json::{Value as Json, json};

/// A rule found in a CRD's schema: where, what, and what it says when broken.
#[derive(Debug)]
struct Rule {
    crd: &'static str,
    path: String,
    rule: String,
    message: String,
}

/// Every `x-kubernetes-validations` rule under `schema`.
fn rules_in(crd: &'static str, path: String, schema: &Json, found: &mut Vec<Rule>) {
    match schema {
        Json::Object(fields) => {
            for rule in fields
                .get("x-kubernetes-validations")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                found.push(Rule {
                    crd,
                    path: path.clone(),
                    rule: rule["rule"].as_str().unwrap_or_default().to_owned(),
                    message: rule["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            for (key, value) in fields {
                rules_in(crd, format!("{path}/{key}"), value, found);
            }
        }
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                rules_in(crd, format!("{path}/{i}"), item, found);
            }
        }
        _ => {}
    }
}

fn every_rule() -> Vec<Rule> {
    let mut found = Vec::new();
    for (name, crd) in [
        ("WebhookEndpoint", hookline_api::crd()),
        ("WebhookPool", hookline_api::pool_crd()),
    ] {
        let crd = serde_json::to_value(crd).expect("the CRD serialises");
        rules_in(name, String::new(), &crd, &mut found);
    }
    found
}

/// `self` (and `oldSelf` for a transition rule) and whether the rule holds.
type Case = (Json, Option<Json>, bool);

/// The cases of each rule, by its text.
fn cases(rule: &str) -> Option<Vec<Case>> {
    Some(match rule {
        "self != ''" => vec![(json!("x"), None, true), (json!(""), None, false)],
        "self > 0.0" => vec![
            (json!(0.5), None, true),
            (json!(1000.0), None, true),
            (json!(0.0), None, false),
            (json!(-1.0), None, false),
        ],
        "self.startsWith('/')" => vec![
            (json!("/stripe"), None, true),
            (json!("stripe"), None, false),
        ],
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas" =>
        {
            vec![
                (json!({}), None, true),
                (json!({"maxReplicas": 0}), None, true),
                (json!({"minReplicas": 1, "maxReplicas": 1}), None, true),
                (json!({"minReplicas": 2, "maxReplicas": 10}), None, true),
                (json!({"minReplicas": 3, "maxReplicas": 2}), None, false),
            ]
        }
        // A pool's shared stream cannot be turned off (its members' events
        // wait there); turning it on, keeping it or changing it can be.
        "!has(oldSelf.stream) || has(self.stream)" => vec![
            (json!({}), Some(json!({})), true),
            (json!({"stream": {}}), Some(json!({})), true),
            (
                json!({"stream": {"maxAge": "1h"}}),
                Some(json!({"stream": {"maxAge": "7d"}})),
                true,
            ),
            (json!({}), Some(json!({"stream": {"maxAge": "7d"}})), false),
            (json!({"receiver": {}}), Some(json!({"stream": {}})), false),
        ],
        _ => return None,
    })
}

fn evaluate(program: &Program, this: &Json, old: Option<&Json>) -> Value {
    let mut context = Context::default();
    context
        .add_variable("self", this.clone())
        .expect("self is a CEL value");
    if let Some(old) = old {
        context
            .add_variable("oldSelf", old.clone())
            .expect("oldSelf is a CEL value");
    }
    program
        .execute(&context)
        .unwrap_or_else(|err| panic!("cannot evaluate on {this} / {old:?}: {err}"))
}

#[test]
fn every_cel_rule_compiles_and_refuses_exactly_what_its_message_says() {
    let rules = every_rule();
    assert!(
        rules.iter().any(|rule| rule.rule.contains("oldSelf")),
        "the pool's transition rule is in the CRD"
    );
    for rule in &rules {
        let at = format!("{} {}: {:?}", rule.crd, rule.path, rule.rule);
        assert!(!rule.message.is_empty(), "{at} has no message");
        let program = Program::compile(&rule.rule)
            .unwrap_or_else(|err| panic!("{at} does not compile: {err}"));
        let cases =
            cases(&rule.rule).unwrap_or_else(|| panic!("{at} has no cases in this test: add them"));
        assert!(
            cases.iter().any(|(_, _, holds)| *holds) && cases.iter().any(|(_, _, holds)| !holds),
            "{at} needs a case that keeps it and one that breaks it"
        );
        for (this, old, holds) in &cases {
            assert_eq!(
                evaluate(&program, this, old.as_ref()),
                Value::Bool(*holds),
                "{at} on self {this}, oldSelf {old:?}"
            );
        }
    }
}
