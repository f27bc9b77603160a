//! Label selectors (`matchLabels` and `matchExpressions`): parsed from JSON, matched against
//! an object's labels, and rendered as a list query (`labelSelector=`).

use serde_json::{Map, Value};

use super::{Error, Result};

/// A parsed `metav1.LabelSelector`. An empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Parses a label selector given as JSON (`{matchLabels, matchExpressions}`).
    ///
    /// # Errors
    /// [`Error::BadSelector`] when it is not an object, `matchLabels` is not a map of strings,
    /// `matchExpressions` is not a list of `{key, operator, values}`, the operator is unknown,
    /// or the values do not fit the operator (`In`/`NotIn` need some, `Exists`/`DoesNotExist`
    /// take none).
    pub fn from_json(selector: &Value) -> Result<Self> {
        let bad = |reason: String| Error::BadSelector { reason };
        let Some(selector) = selector.as_object() else {
            return Err(bad("not an object".into()));
        };
        let mut requirements = Vec::new();
        match selector.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Some(value) = value.as_str() else {
                        return Err(bad(format!("matchLabels.{key} is not a string")));
                    };
                    requirements.push(Requirement {
                        key: key.clone(),
                        op: Op::In,
                        values: vec![value.to_owned()],
                    });
                }
            }
            Some(_) => return Err(bad("matchLabels is not an object".into())),
        }
        match selector.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (index, expression) in expressions.iter().enumerate() {
                    requirements.push(parse_expression(index, expression).map_err(bad)?);
                }
            }
            Some(_) => return Err(bad("matchExpressions is not an array".into())),
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these `metadata.labels` is selected (`None`: no labels).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r.op {
            Op::In => label(&r.key).is_some_and(|v| r.values.iter().any(|x| x == v)),
            Op::NotIn => label(&r.key).is_none_or(|v| !r.values.iter().any(|x| x == v)),
            Op::Exists => label(&r.key).is_some(),
            Op::DoesNotExist => label(&r.key).is_none(),
        })
    }

    /// Whether `object`'s `metadata.labels` are selected.
    pub fn matches_object(&self, object: &Value) -> bool {
        let labels = object
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.matches(labels)
    }

    /// The selector in the API's query syntax (`app=web,tier in (a,b),!canary`); empty for
    /// the selector that matches everything.
    pub fn to_query(&self) -> String {
        self.requirements
            .iter()
            .map(|r| match r.op {
                Op::In if r.values.len() == 1 => format!("{}={}", r.key, r.values[0]),
                Op::In => format!("{} in ({})", r.key, r.values.join(",")),
                Op::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_expression(index: usize, expression: &Value) -> std::result::Result<Requirement, String> {
    let at = format!("matchExpressions[{index}]");
    let Some(expression) = expression.as_object() else {
        return Err(format!("{at} is not an object"));
    };
    let Some(key) = expression.get("key").and_then(Value::as_str) else {
        return Err(format!("{at}.key is not a string"));
    };
    let op = match expression.get("operator").and_then(Value::as_str) {
        Some("In") => Op::In,
        Some("NotIn") => Op::NotIn,
        Some("Exists") => Op::Exists,
        Some("DoesNotExist") => Op::DoesNotExist,
        Some(other) => return Err(format!("{at}.operator {other:?} is not a valid operator")),
        None => return Err(format!("{at}.operator is not a string")),
    };
    let values = match expression.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{at}.values are not all strings"))?,
        Some(_) => return Err(format!("{at}.values is not an array")),
    };
    match op {
        Op::In | Op::NotIn if values.is_empty() => Err(format!(
            "{at}: values must be non-empty for operator In and NotIn"
        )),
        Op::Exists | Op::DoesNotExist if !values.is_empty() => Err(format!(
            "{at}: values must be empty for operator Exists and DoesNotExist"
        )),
        _ => Ok(Requirement {
            key: key.to_owned(),
            op,
            values,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: Value) -> LabelSelector {
        LabelSelector::from_json(&v).unwrap()
    }

    fn labels(v: Value) -> Value {
        json!({"metadata": {"labels": v}})
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel(json!({}));
        assert!(s.matches(None));
        assert!(s.matches_object(&labels(json!({"a": "b"}))));
        assert_eq!(s.to_query(), "");
        assert!(sel(json!({"matchLabels": null, "matchExpressions": []})).matches(None));
    }

    #[test]
    fn match_labels() {
        let s = sel(json!({"matchLabels": {"app": "web", "tier": "front"}}));
        assert!(s.matches_object(&labels(json!({"app": "web", "tier": "front", "x": "y"}))));
        assert!(!s.matches_object(&labels(json!({"app": "web"}))));
        assert!(!s.matches_object(&labels(json!({"app": "db", "tier": "front"}))));
        assert!(!s.matches_object(&json!({"metadata": {}})));
        assert!(!s.matches_object(&labels(json!({"app": 1, "tier": "front"}))));
        assert_eq!(s.to_query(), "app=web,tier=front");
    }

    #[test]
    fn match_expressions() {
        let s = sel(json!({"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "track", "operator": "NotIn", "values": ["canary"]},
            {"key": "app", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []}
        ]}));
        assert!(s.matches_object(&labels(json!({"env": "prod", "app": "x"}))));
        assert!(s.matches_object(&labels(
            json!({"env": "staging", "app": "x", "track": "stable"})
        )));
        assert!(!s.matches_object(&labels(json!({"env": "dev", "app": "x"}))));
        assert!(!s.matches_object(&labels(
            json!({"env": "prod", "app": "x", "track": "canary"})
        )));
        assert!(!s.matches_object(&labels(json!({"env": "prod"}))));
        assert!(!s.matches_object(&labels(json!({"env": "prod", "app": "x", "legacy": "y"}))));
        assert_eq!(
            s.to_query(),
            "env in (prod,staging),track notin (canary),app,!legacy"
        );
    }

    #[test]
    fn labels_and_expressions_combine() {
        let s = sel(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}));
        assert!(s.matches_object(&labels(json!({"app": "web"}))));
        assert!(!s.matches_object(&labels(json!({"app": "api"}))));
        assert_eq!(s.to_query(), "app=web,app in (web,api)");
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in [
            json!("app=web"),
            json!({"matchLabels": []}),
            json!({"matchLabels": {"a": 1}}),
            json!({"matchExpressions": {}}),
            json!({"matchExpressions": [3]}),
            json!({"matchExpressions": [{"operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Like"}]}),
            json!({"matchExpressions": [{"key": "a"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}),
        ] {
            assert!(
                matches!(
                    LabelSelector::from_json(&bad),
                    Err(Error::BadSelector { .. })
                ),
                "{bad}"
            );
        }
        let err = LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Like"}]}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid spec.selector: matchExpressions[0].operator \"Like\" is not a valid operator"
        );
    }
}
