//! The status pipeline: the first rule that answers wins.
//!
//! 1. deletion timestamp → Terminating; 2. generation not observed → InProgress;
//! 3. `Reconciling=True` / `Stalled=True` → InProgress / Failed; 4. the type-specific rule;
//! 5. `Ready` for types without a rule; 6. Current.

use std::time::SystemTime;

use serde_json::Value;

use super::conditions::{self, ObjectCondition};
use super::fields::{self, strict_int, strict_str};
use super::types::{self, RuleInput};
use super::{Error, Result, StatusResult};

/// Computes the status of `object` from its own content (status fields included), reading
/// the clock for the Pod scheduling window.
///
/// # Errors
/// [`Error`] naming the malformed field (see [`compute_at`]).
pub fn compute(object: &Value) -> Result<StatusResult> {
    compute_at(object, SystemTime::now())
}

/// Computes the status of `object` as of `now` (which only matters for Pods that are not
/// scheduled: younger than [`SCHEDULE_WINDOW`](super::SCHEDULE_WINDOW) they are InProgress,
/// older they are Failed).
///
/// # Errors
/// - [`Error::NotAnObject`] when `object` is not a JSON object;
/// - [`Error::WrongType`] when `metadata.deletionTimestamp` is not a string, `metadata.generation`
///   or `status.observedGeneration` is not an integer, `status.conditions` is malformed, or a
///   DaemonSet's generation fields are not integers;
/// - [`Error::UnknownPhase`] for a Pod in a phase kstatus does not know;
/// - [`Error::ClockOutOfRange`] when `now` is not a representable timestamp.
pub fn compute_at(object: &Value, now: SystemTime) -> Result<StatusResult> {
    if !object.is_object() {
        return Err(Error::NotAnObject);
    }
    let kind = fields::kind(object);

    // 1. Deletion.
    if let Some(deletion) = strict_str(object, &["metadata", "deletionTimestamp"])? {
        if !deletion.is_empty() {
            return Ok(StatusResult::terminating());
        }
    }

    // 2. Generation.
    if let Some(result) = check_generation(object, kind)? {
        return Ok(result);
    }

    // 3. The standard conditions.
    let conditions = conditions::read(object)?;
    if let Some(result) = standard_conditions(&conditions) {
        return Ok(result);
    }

    // 4. Type-specific rule: its answer is final.
    if let Some(rule) = types::rule_for(fields::group(object), kind) {
        let input = RuleInput {
            object,
            kind,
            conditions: &conditions,
            now,
        };
        return rule(&input);
    }

    // 5. Ready.
    if let Some(result) = ready_condition(&conditions) {
        return Ok(result);
    }

    // 6. Default.
    Ok(StatusResult::current("Resource is current"))
}

/// InProgress when both generations are present and differ.
fn check_generation(object: &Value, kind: &str) -> Result<Option<StatusResult>> {
    let Some(generation) = strict_int(object, &["metadata", "generation"])? else {
        return Ok(None);
    };
    let Some(observed) = strict_int(object, &["status", "observedGeneration"])? else {
        return Ok(None);
    };
    if generation == observed {
        return Ok(None);
    }
    Ok(Some(StatusResult::in_progress(
        "LatestGenerationNotObserved",
        format!("{kind} generation is {generation}, but latest observed generation is {observed}"),
    )))
}

/// The first `Reconciling=True` or `Stalled=True`, carried over.
fn standard_conditions(conditions: &[ObjectCondition]) -> Option<StatusResult> {
    conditions.iter().find_map(|c| {
        if c.is("Reconciling", "True") {
            Some(StatusResult::in_progress(&c.reason, &c.message))
        } else if c.is("Stalled", "True") {
            Some(StatusResult::failed(&c.reason, &c.message))
        } else {
            None
        }
    })
}

/// The first `Ready` condition with a True, False or Unknown status: True → Current,
/// False/Unknown → InProgress carrying its reason and message. A `Ready` entry with any other
/// status is passed over, as the library's `checkReadyCondition` loop does.
fn ready_condition(conditions: &[ObjectCondition]) -> Option<StatusResult> {
    conditions
        .iter()
        .filter(|c| c.r#type == "Ready")
        .find_map(|ready| match ready.status.as_str() {
            "True" => Some(StatusResult::current("Resource is Ready")),
            "False" | "Unknown" => Some(StatusResult::in_progress(&ready.reason, &ready.message)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Condition, ConditionStatus, ConditionType, Status};
    use serde_json::json;

    fn reconciling(reason: &str, message: &str) -> Vec<Condition> {
        vec![Condition {
            r#type: ConditionType::Reconciling,
            status: ConditionStatus::True,
            reason: reason.into(),
            message: message.into(),
        }]
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert_eq!(compute(&json!([])), Err(Error::NotAnObject));
        assert_eq!(compute(&json!("x")), Err(Error::NotAnObject));
        assert_eq!(compute(&json!(null)), Err(Error::NotAnObject));
    }

    #[test]
    fn deletion_timestamp_is_terminating() {
        let o = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "generation": 2},
            "status": {"observedGeneration": 1, "phase": "Bogus"}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::Terminating);
        assert_eq!(r.message, "Resource scheduled for deletion");
        assert!(r.conditions.is_empty());
    }

    #[test]
    fn deletion_timestamp_empty_or_null_is_ignored() {
        for ts in [json!(""), json!(null)] {
            let o = json!({"kind": "Thing", "metadata": {"deletionTimestamp": ts}});
            assert_eq!(compute(&o).unwrap().status, Status::Current);
        }
    }

    #[test]
    fn deletion_timestamp_not_a_string_is_an_error() {
        let o = json!({"kind": "Thing", "metadata": {"deletionTimestamp": 5}});
        assert_eq!(
            compute(&o),
            Err(Error::WrongType {
                field: "metadata.deletionTimestamp".into(),
                expected: "a string"
            })
        );
        let o = json!({"kind": "Thing", "metadata": "x"});
        assert_eq!(
            compute(&o),
            Err(Error::WrongType {
                field: "metadata".into(),
                expected: "an object"
            })
        );
    }

    #[test]
    fn generation_not_observed_is_in_progress() {
        let o = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"generation": 3}, "status": {"observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::InProgress);
        let msg = "Widget generation is 3, but latest observed generation is 2";
        assert_eq!(r.message, msg);
        assert_eq!(
            r.conditions,
            reconciling("LatestGenerationNotObserved", msg)
        );
    }

    #[test]
    fn generation_ahead_of_observed_either_way() {
        let o = json!({"kind": "Widget", "metadata": {"generation": 1}, "status": {"observedGeneration": 2}});
        assert_eq!(compute(&o).unwrap().status, Status::InProgress);
    }

    #[test]
    fn generation_equal_or_absent_is_skipped() {
        for o in [
            json!({"kind": "W", "metadata": {"generation": 2}, "status": {"observedGeneration": 2}}),
            json!({"kind": "W", "metadata": {"generation": 2}}),
            json!({"kind": "W", "metadata": {"generation": 2}, "status": null}),
            json!({"kind": "W", "status": {"observedGeneration": 2}}),
            // generation absent: observedGeneration is not even looked at.
            json!({"kind": "W", "status": {"observedGeneration": "x"}}),
        ] {
            let r = compute(&o).unwrap();
            assert_eq!(r.status, Status::Current, "{o}");
            assert_eq!(r.message, "Resource is current");
        }
    }

    #[test]
    fn generation_not_an_integer_is_an_error() {
        let o = json!({"kind": "W", "metadata": {"generation": "2"}, "status": {"observedGeneration": 2}});
        assert_eq!(
            compute(&o),
            Err(Error::WrongType {
                field: "metadata.generation".into(),
                expected: "an integer"
            })
        );
        let o = json!({"kind": "W", "metadata": {"generation": 2}, "status": {"observedGeneration": 2.0}});
        assert_eq!(
            compute(&o),
            Err(Error::WrongType {
                field: "status.observedGeneration".into(),
                expected: "an integer"
            })
        );
    }

    #[test]
    fn reconciling_true_is_in_progress_with_its_reason() {
        let o = json!({"kind": "W", "status": {"conditions": [
            {"type": "Reconciling", "status": "False", "reason": "Ignored", "message": "no"},
            {"type": "Ready", "status": "True"},
            {"type": "Reconciling", "status": "True", "reason": "Working", "message": "busy"},
            {"type": "Stalled", "status": "True", "reason": "Later", "message": "late"}
        ]}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::InProgress);
        assert_eq!(r.message, "busy");
        assert_eq!(r.conditions, reconciling("Working", "busy"));
    }

    #[test]
    fn stalled_true_is_failed_with_its_reason() {
        let o = json!({"kind": "W", "status": {"conditions": [
            {"type": "Stalled", "status": "Unknown", "reason": "Ignored"},
            {"type": "Stalled", "status": "True", "reason": "Stuck", "message": "help"},
            {"type": "Reconciling", "status": "True", "reason": "Later"}
        ]}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.message, "help");
        assert_eq!(r.conditions[0].r#type, ConditionType::Stalled);
        assert_eq!(r.conditions[0].reason, "Stuck");
        assert_eq!(r.conditions[0].message, "help");
    }

    #[test]
    fn standard_conditions_win_over_type_rules() {
        let o = json!({"apiVersion": "v1", "kind": "Secret", "status": {"conditions": [
            {"type": "Stalled", "status": "True", "reason": "R", "message": "m"}]}});
        assert_eq!(compute(&o).unwrap().status, Status::Failed);
    }

    #[test]
    fn malformed_conditions_are_an_error() {
        let o = json!({"kind": "W", "status": {"conditions": "nope"}});
        assert!(
            matches!(compute(&o), Err(Error::WrongType { field, .. }) if field == "status.conditions")
        );
        let o = json!({"kind": "W", "status": 3});
        assert!(matches!(compute(&o), Err(Error::WrongType { field, .. }) if field == "status"));
    }

    #[test]
    fn status_null_is_fine() {
        let o = json!({"apiVersion": "v1", "kind": "Namespace", "status": null});
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::current("Resource is current")
        );
    }

    #[test]
    fn ready_true_is_current() {
        let o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Done"},
            {"type": "Ready", "status": "False"}]}});
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::current("Resource is Ready")
        );
    }

    #[test]
    fn ready_false_or_unknown_is_in_progress_with_its_reason() {
        for status in ["False", "Unknown"] {
            let o = json!({"kind": "Widget", "status": {"conditions": [
                {"type": "Other", "status": "True"},
                {"type": "Ready", "status": status, "reason": "Waiting", "message": "not yet"},
                {"type": "Ready", "status": "True"}]}});
            let r = compute(&o).unwrap();
            assert_eq!(r.status, Status::InProgress);
            assert_eq!(r.message, "not yet");
            assert_eq!(r.conditions, reconciling("Waiting", "not yet"));
        }
    }

    #[test]
    fn ready_without_message_is_in_progress_with_empty_message() {
        let o = json!({"kind": "Widget", "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::InProgress);
        assert_eq!(r.message, "");
        assert_eq!(r.conditions, reconciling("", ""));
    }

    #[test]
    fn ready_with_other_status_falls_to_default() {
        let o = json!({"kind": "Widget", "status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}});
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::current("Resource is current")
        );
    }

    #[test]
    fn an_api_version_that_is_no_group_version_selects_no_group_rule() {
        let o = json!({"apiVersion": "apps/v1/x", "kind": "Deployment", "spec": {"replicas": 1}});
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::current("Resource is current")
        );
    }

    #[test]
    fn a_ready_entry_with_another_status_is_passed_over() {
        let o = json!({"kind": "Widget", "status": {"conditions": [
            {"type": "Ready"},
            {"type": "Ready", "status": "False", "reason": "Waiting", "message": "m"}]}});
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::InProgress);
        assert_eq!(r.conditions, reconciling("Waiting", "m"));
        let o = json!({"kind": "Widget", "status": {"conditions": [
            {"type": "Ready", "status": ""}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::current("Resource is Ready")
        );
    }

    #[test]
    fn ready_is_not_used_for_types_with_a_rule() {
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(compute(&o).unwrap().message, "Resource is always ready");
    }

    #[test]
    fn namespace_and_custom_resources_use_ready_then_default() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Active"}});
        assert_eq!(
            compute(&ns).unwrap(),
            StatusResult::current("Resource is current")
        );
        let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"generation": 1}});
        assert_eq!(
            compute(&cr).unwrap(),
            StatusResult::current("Resource is current")
        );
        // No kind at all is no rule.
        assert_eq!(compute(&json!({})).unwrap().status, Status::Current);
    }

    #[test]
    fn rules_are_looked_up_by_group_not_version() {
        // apps/v1beta2 is still apps: the Deployment rule applies.
        let o = json!({"apiVersion": "apps/v1beta2", "kind": "Deployment"});
        assert_eq!(compute(&o).unwrap().message, "Replicas: 0/1");
        // A Deployment kind in another group is a custom resource.
        let o = json!({"apiVersion": "example.com/v1", "kind": "Deployment"});
        assert_eq!(compute(&o).unwrap().message, "Resource is current");
        // Core kinds have no group.
        let o = json!({"apiVersion": "example.com/v1", "kind": "Secret",
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(compute(&o).unwrap().status, Status::InProgress);
    }

    #[test]
    fn clock_out_of_range_is_an_error_only_when_needed() {
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(400_000 * 365 * 86_400);
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}});
        assert_eq!(compute_at(&pod, far), Err(Error::ClockOutOfRange));
        let running = json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"}});
        assert!(compute_at(&running, far).is_ok());
    }

    #[test]
    fn malformed_input_never_panics() {
        let kinds = [
            ("v1", "Pod"),
            ("v1", "Service"),
            ("v1", "Secret"),
            ("v1", "ConfigMap"),
            ("v1", "PersistentVolumeClaim"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("apps/v1", "ReplicaSet"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("policy/v1", "PodDisruptionBudget"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("x.io/v1", "Widget"),
        ];
        let weird = [
            json!(null),
            json!(1),
            json!(-1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!("s"),
            json!(true),
            json!([]),
            json!([1, "a", null]),
            json!({}),
            json!({"a": {"b": []}}),
        ];
        for (api, kind) in kinds {
            for w in &weird {
                for section in ["spec", "status", "metadata"] {
                    let mut o = json!({"apiVersion": api, "kind": kind});
                    o[section] = w.clone();
                    let _ = compute(&o);
                    for field in [
                        "replicas",
                        "phase",
                        "conditions",
                        "containerStatuses",
                        "selector",
                        "updateStrategy",
                        "generation",
                        "observedGeneration",
                        "desiredNumberScheduled",
                        "startTime",
                        "type",
                        "clusterIP",
                        "creationTimestamp",
                        "deletionTimestamp",
                    ] {
                        let mut o = json!({"apiVersion": api, "kind": kind, section: {}});
                        o[section][field] = w.clone();
                        let _ = compute(&o);
                        let mut copy = o.clone();
                        let _ = crate::status::augment(&mut copy);
                        let _ = crate::status::compute_with_generated(&o, std::slice::from_ref(&o));
                    }
                }
            }
        }
    }
}
