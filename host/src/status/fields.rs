//! Reading fields of an object given as JSON: lenient readers with defaults (the type rules)
//! and strict readers that reject a wrong type (the generic pipeline).

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{Error, Result};

/// The value at `path`, or `None` when a step is missing, `null`, or not an object.
pub(crate) fn lookup<'a>(object: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut current = object;
    for key in path {
        current = current.as_object()?.get(*key)?;
    }
    (!current.is_null()).then_some(current)
}

/// An integer field, or `default` when it is missing or not a real integer (a float, string
/// or bool counts as missing).
pub(crate) fn int_field(object: &Value, path: &[&str], default: i64) -> i64 {
    lookup(object, path)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// A string field, or `default` when it is missing or not a string.
pub(crate) fn str_field<'a>(object: &'a Value, path: &[&str], default: &'a str) -> &'a str {
    lookup(object, path)
        .and_then(Value::as_str)
        .unwrap_or(default)
}

/// The value at `path`; `Ok(None)` when missing or `null`, an error when a step on the way is
/// neither an object nor `null`.
pub(crate) fn strict_lookup<'a>(object: &'a Value, path: &[&str]) -> Result<Option<&'a Value>> {
    let mut current = object;
    for (depth, key) in path.iter().enumerate() {
        match current {
            Value::Object(map) => match map.get(*key) {
                None | Some(Value::Null) => return Ok(None),
                Some(value) => current = value,
            },
            Value::Null => return Ok(None),
            _ if depth == 0 => return Err(Error::NotAnObject),
            _ => {
                return Err(Error::WrongType {
                    field: path[..depth].join("."),
                    expected: "an object",
                })
            }
        }
    }
    Ok(Some(current))
}

/// An integer field that must be a real integer when present.
pub(crate) fn strict_int(object: &Value, path: &[&str]) -> Result<Option<i64>> {
    match strict_lookup(object, path)? {
        None => Ok(None),
        Some(value) => value.as_i64().map(Some).ok_or_else(|| Error::WrongType {
            field: path.join("."),
            expected: "an integer",
        }),
    }
}

/// A string field that must be a string when present.
pub(crate) fn strict_str<'a>(object: &'a Value, path: &[&str]) -> Result<Option<&'a str>> {
    match strict_lookup(object, path)? {
        None => Ok(None),
        Some(value) => value.as_str().map(Some).ok_or_else(|| Error::WrongType {
            field: path.join("."),
            expected: "a string",
        }),
    }
}

/// The API group of the object's `apiVersion` (`""` for the core group, when missing, or when
/// the value is not a group/version at all, e.g. `a/b/c`: apimachinery's
/// `FromAPIVersionAndKind` then drops group and version, so no group's type rule applies).
pub(crate) fn group(object: &Value) -> &str {
    let api_version = str_field(object, &["apiVersion"], "");
    match api_version.split_once('/') {
        Some((group, version)) if !version.contains('/') => group,
        _ => "",
    }
}

/// The object's `kind` (`""` when missing or not a string).
pub(crate) fn kind(object: &Value) -> &str {
    str_field(object, &["kind"], "")
}

/// `now` as a Kubernetes timestamp.
pub(crate) fn timestamp(now: SystemTime) -> Result<Timestamp> {
    Timestamp::try_from(now).map_err(|_| Error::ClockOutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_walks_objects_only() {
        let o = json!({"a": {"b": 1, "n": null}, "s": "x"});
        assert_eq!(lookup(&o, &["a", "b"]), Some(&json!(1)));
        assert_eq!(lookup(&o, &["a", "n"]), None);
        assert_eq!(lookup(&o, &["s", "b"]), None);
        assert_eq!(lookup(&o, &["missing"]), None);
        assert_eq!(lookup(&json!(3), &["a"]), None);
    }

    #[test]
    fn int_field_counts_only_real_integers() {
        let o = json!({"spec": {"i": 3, "f": 3.0, "s": "3", "b": true, "neg": -2}});
        assert_eq!(int_field(&o, &["spec", "i"], 1), 3);
        assert_eq!(int_field(&o, &["spec", "neg"], 1), -2);
        assert_eq!(int_field(&o, &["spec", "f"], 1), 1);
        assert_eq!(int_field(&o, &["spec", "s"], 1), 1);
        assert_eq!(int_field(&o, &["spec", "b"], 1), 1);
        assert_eq!(int_field(&o, &["spec", "none"], 7), 7);
        assert_eq!(int_field(&json!({"spec": [1]}), &["spec", "i"], 7), 7);
        assert_eq!(int_field(&json!({"n": u64::MAX}), &["n"], 7), 7);
    }

    #[test]
    fn str_field_defaults_for_non_strings() {
        let o = json!({"a": "x", "b": 1, "c": null});
        assert_eq!(str_field(&o, &["a"], "d"), "x");
        assert_eq!(str_field(&o, &["b"], "d"), "d");
        assert_eq!(str_field(&o, &["c"], "d"), "d");
    }

    #[test]
    fn strict_readers_reject_wrong_types() {
        let o = json!({"metadata": {"generation": 1.5, "name": 3}, "status": "oops", "n": null});
        assert_eq!(
            strict_int(&o, &["metadata", "generation"]),
            Err(Error::WrongType {
                field: "metadata.generation".into(),
                expected: "an integer"
            })
        );
        assert_eq!(
            strict_str(&o, &["metadata", "name"]),
            Err(Error::WrongType {
                field: "metadata.name".into(),
                expected: "a string"
            })
        );
        assert_eq!(
            strict_int(&o, &["status", "observedGeneration"]),
            Err(Error::WrongType {
                field: "status".into(),
                expected: "an object"
            })
        );
        assert_eq!(strict_int(&o, &["n", "x"]), Ok(None));
        assert_eq!(strict_int(&o, &["missing", "x"]), Ok(None));
        assert_eq!(strict_int(&json!([1]), &["a"]), Err(Error::NotAnObject));
    }

    #[test]
    fn group_and_kind() {
        assert_eq!(group(&json!({"apiVersion": "apps/v1"})), "apps");
        assert_eq!(group(&json!({"apiVersion": "v1"})), "");
        assert_eq!(group(&json!({})), "");
        assert_eq!(kind(&json!({"kind": "Pod"})), "Pod");
        assert_eq!(kind(&json!({"kind": 1})), "");
    }
}
