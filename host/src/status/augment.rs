//! Writing the standard conditions a result implies back into the object.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value};

use super::fields::timestamp;
use super::generic::compute_at;
use super::{Error, Result};

/// Computes the status of `object` and writes the conditions the result implies
/// (`Reconciling=True` for InProgress, `Stalled=True` for Failed) into `status.conditions`,
/// stamped with the current time. See [`augment_at`].
///
/// # Errors
/// As [`augment_at`].
pub fn augment(object: &mut Value) -> Result<()> {
    augment_at(object, SystemTime::now())
}

/// Like [`augment`], computing the status and stamping times as of `now`.
///
/// For each implied condition: an existing condition of the same type is updated in place
/// (`status`, `reason`, `message`, `lastUpdateTime`; `lastTransitionTime` only when its status
/// changes); otherwise the condition is appended with both times set to `now`. Other
/// conditions are kept as they are. As in cli-utils, `status.conditions` is always written
/// (an empty array when there is nothing to add), creating `status` when missing or `null`.
///
/// # Errors
/// Any error of [`compute_at`](super::compute_at); [`Error::WrongType`] when `status` is not
/// an object or `status.conditions` is not an array of objects with string `type`s (and a
/// string `status` where the type matches); `object` is left unchanged on error.
pub fn augment_at(object: &mut Value, now: SystemTime) -> Result<()> {
    let result = compute_at(object, now)?;
    let now = Timestamp::from_second(timestamp(now)?.as_second())
        .map_err(|_| Error::ClockOutOfRange)?
        .to_string();

    let Value::Object(root) = object else {
        return Err(Error::NotAnObject);
    };
    let status = match root.get("status") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(status)) => status.clone(),
        Some(_) => {
            return Err(Error::WrongType {
                field: "status".into(),
                expected: "an object",
            })
        }
    };
    let mut conditions = match status.get("conditions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => {
            return Err(Error::WrongType {
                field: "status.conditions".into(),
                expected: "an array",
            })
        }
    };

    for implied in &result.conditions {
        let mut present = false;
        for (index, entry) in conditions.iter_mut().enumerate() {
            let Value::Object(entry) = entry else {
                return Err(Error::WrongType {
                    field: format!("status.conditions[{index}]"),
                    expected: "an object",
                });
            };
            let Some(Value::String(ty)) = entry.get("type") else {
                return Err(Error::WrongType {
                    field: format!("status.conditions[{index}].type"),
                    expected: "a string",
                });
            };
            if ty != implied.r#type.as_str() {
                continue;
            }
            let Some(Value::String(old_status)) = entry.get("status") else {
                return Err(Error::WrongType {
                    field: format!("status.conditions[{index}].status"),
                    expected: "a string",
                });
            };
            if old_status != implied.status.as_str() {
                entry.insert("lastTransitionTime".into(), Value::String(now.clone()));
            }
            entry.insert("status".into(), implied.status.as_str().into());
            entry.insert("lastUpdateTime".into(), Value::String(now.clone()));
            entry.insert("reason".into(), implied.reason.clone().into());
            entry.insert("message".into(), implied.message.clone().into());
            present = true;
        }
        if !present {
            let mut entry = Map::new();
            entry.insert("type".into(), implied.r#type.as_str().into());
            entry.insert("status".into(), implied.status.as_str().into());
            entry.insert("reason".into(), implied.reason.clone().into());
            entry.insert("message".into(), implied.message.clone().into());
            entry.insert("lastTransitionTime".into(), Value::String(now.clone()));
            entry.insert("lastUpdateTime".into(), Value::String(now.clone()));
            conditions.push(Value::Object(entry));
        }
    }

    let mut status = status;
    status.insert("conditions".into(), Value::Array(conditions));
    root.insert("status".into(), Value::Object(status));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;

    fn at() -> SystemTime {
        // 2024-01-01T00:00:00.5Z: sub-second precision is dropped.
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_067_200_500)
    }
    const NOW: &str = "2024-01-01T00:00:00Z";

    fn running_pod(conditions: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "generation": 1},
            "status": {"phase": "Running", "conditions": conditions}})
    }

    #[test]
    fn appends_reconciling_for_in_progress() {
        let mut o = running_pod(json!([]));
        augment_at(&mut o, at()).unwrap();
        assert_eq!(
            o["status"]["conditions"],
            json!([{"type": "Reconciling", "status": "True", "reason": "PodRunningNotReady",
                "message": "Pod is running but is not Ready",
                "lastTransitionTime": NOW, "lastUpdateTime": NOW}])
        );
        assert_eq!(o["status"]["phase"], "Running");
    }

    #[test]
    fn keeps_other_conditions() {
        let ready = json!({"type": "Ready", "status": "False", "reason": "Pod has not started",
            "lastTransitionTime": "2020-01-01T00:00:00Z"});
        let mut o = running_pod(json!([ready.clone()]));
        augment_at(&mut o, at()).unwrap();
        let conds = o["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0], ready);
        assert_eq!(conds[1]["type"], "Reconciling");
        assert_eq!(conds[1]["reason"], "PodRunningNotReady");
    }

    #[test]
    fn appends_stalled_for_failed() {
        let mut o = json!({"apiVersion": "batch/v1", "kind": "Job",
            "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}});
        augment_at(&mut o, at()).unwrap();
        let conds = o["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[1]["type"], "Stalled");
        assert_eq!(conds[1]["status"], "True");
        assert_eq!(conds[1]["reason"], "JobFailed");
        assert_eq!(conds[1]["message"], "Job Failed. failed: 1/1");
    }

    #[test]
    fn updates_existing_condition_keeping_transition_time_when_status_is_unchanged() {
        let mut o = running_pod(json!([{"type": "Reconciling", "status": "True",
            "reason": "PodIsAbsolutelyNotReady", "message": "old",
            "lastTransitionTime": "2020-01-01T00:00:00Z", "lastUpdateTime": "2020-01-01T00:00:00Z"}]));
        augment_at(&mut o, at()).unwrap();
        let conds = o["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        // Reconciling=True is carried over by the generic rule, so reason and message stay.
        assert_eq!(conds[0]["reason"], "PodIsAbsolutelyNotReady");
        assert_eq!(conds[0]["message"], "old");
        assert_eq!(conds[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(conds[0]["lastUpdateTime"], NOW);
    }

    #[test]
    fn updates_existing_condition_with_new_transition_time_when_status_changes() {
        let mut o = running_pod(json!([{"type": "Reconciling", "status": "False",
            "reason": "Old", "lastTransitionTime": "2020-01-01T00:00:00Z"}]));
        augment_at(&mut o, at()).unwrap();
        let conds = o["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[0]["reason"], "PodRunningNotReady");
        assert_eq!(conds[0]["message"], "Pod is running but is not Ready");
        assert_eq!(conds[0]["lastTransitionTime"], NOW);
        assert_eq!(conds[0]["lastUpdateTime"], NOW);
    }

    #[test]
    fn current_writes_no_conditions_but_an_empty_list() {
        let mut o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"generation": 1}});
        augment_at(&mut o, at()).unwrap();
        assert_eq!(o["status"], json!({"conditions": []}));
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap", "status": null});
        augment_at(&mut o, at()).unwrap();
        assert_eq!(o["status"], json!({"conditions": []}));
    }

    #[test]
    fn creates_status_when_missing() {
        let mut o = json!({"apiVersion": "v1", "kind": "Pod"});
        augment_at(&mut o, at()).unwrap();
        assert_eq!(o["status"]["conditions"][0]["reason"], "PodNotObserved");
    }

    #[test]
    fn errors_leave_the_object_unchanged() {
        for original in [
            json!({"kind": "Widget", "status": {"conditions": [{"type": 1}]}}),
            json!({"kind": "Widget", "status": "x"}),
            json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Weird"}}),
        ] {
            let mut o = original.clone();
            assert!(augment_at(&mut o, at()).is_err(), "{original}");
            assert_eq!(o, original);
        }
        assert_eq!(augment_at(&mut json!(3), at()), Err(Error::NotAnObject));
    }

    #[test]
    fn terminating_skips_condition_checks() {
        // Compute answers before reading the conditions, so malformed ones are kept as is.
        let mut o = json!({"kind": "Widget", "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"conditions": [5]}});
        augment_at(&mut o, at()).unwrap();
        assert_eq!(o["status"]["conditions"], json!([5]));
    }

    #[test]
    fn malformed_status_with_terminating_is_an_error() {
        let mut o = json!({"kind": "Widget", "metadata": {"deletionTimestamp": "x"}, "status": []});
        assert!(
            matches!(augment_at(&mut o, at()), Err(Error::WrongType { field, .. }) if field == "status")
        );
    }

    #[test]
    fn augment_uses_the_clock() {
        let mut o = running_pod(json!([]));
        augment(&mut o).unwrap();
        let stamp = o["status"]["conditions"][0]["lastUpdateTime"]
            .as_str()
            .unwrap();
        assert!(stamp.parse::<Timestamp>().is_ok(), "{stamp}");
    }
}
