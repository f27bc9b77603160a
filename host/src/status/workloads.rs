//! Rules for workload controllers: Deployment, StatefulSet, DaemonSet, ReplicaSet.
//!
//! Counts are read leniently: a missing or non-integer count takes its default (spec
//! replicas 1, status counts 0). Differences saturate instead of overflowing.

use super::fields::{int_field, str_field, strict_int};
use super::types::RuleInput;
use super::{Result, StatusResult};

/// `spec.progressDeadlineSeconds` meaning "no deadline" (math.MaxInt32 in the controller).
const NO_PROGRESS_DEADLINE: i64 = i32::MAX as i64;

/// Deployment (apps, extensions).
pub(crate) fn deployment(input: &RuleInput<'_>) -> Result<StatusResult> {
    let o = input.object;
    let mut progressing = int_field(
        o,
        &["spec", "progressDeadlineSeconds"],
        NO_PROGRESS_DEADLINE,
    ) == NO_PROGRESS_DEADLINE;
    let mut available = false;
    for c in input.conditions {
        match c.r#type.as_str() {
            "Progressing" => {
                if c.reason == "ProgressDeadlineExceeded" {
                    let mut result = StatusResult::failed(&c.reason, &c.message);
                    result.message = "Progress deadline exceeded".to_owned();
                    return Ok(result);
                }
                if c.status == "True" && c.reason == "NewReplicaSetAvailable" {
                    progressing = true;
                }
            }
            "Available" if c.status == "True" => available = true,
            _ => {}
        }
    }

    let spec = int_field(o, &["spec", "replicas"], 1);
    let replicas = int_field(o, &["status", "replicas"], 0);
    let updated = int_field(o, &["status", "updatedReplicas"], 0);
    let ready = int_field(o, &["status", "readyReplicas"], 0);
    let avail = int_field(o, &["status", "availableReplicas"], 0);

    if spec > replicas {
        return in_progress("LessReplicas", format!("Replicas: {replicas}/{spec}"));
    }
    if spec > updated {
        return in_progress("LessUpdated", format!("Updated: {updated}/{spec}"));
    }
    if replicas > spec {
        return extra_pods(replicas, spec);
    }
    if updated > avail {
        return in_progress("LessAvailable", format!("Available: {avail}/{updated}"));
    }
    if spec > ready {
        return in_progress("LessReady", format!("Ready: {ready}/{spec}"));
    }
    if !progressing {
        return in_progress("ReplicaSetNotAvailable", "ReplicaSet not Available");
    }
    if !available {
        return in_progress("DeploymentNotAvailable", "Deployment not Available");
    }
    Ok(StatusResult::current(format!(
        "Deployment is available. Replicas: {replicas}"
    )))
}

/// StatefulSet (apps).
pub(crate) fn statefulset(input: &RuleInput<'_>) -> Result<StatusResult> {
    let o = input.object;
    if str_field(o, &["spec", "updateStrategy", "type"], "") == "OnDelete" {
        return Ok(StatusResult::current(
            "StatefulSet is using the ondelete update strategy",
        ));
    }
    let spec = int_field(o, &["spec", "replicas"], 1);
    let ready = int_field(o, &["status", "readyReplicas"], 0);
    let current = int_field(o, &["status", "currentReplicas"], 0);
    let updated = int_field(o, &["status", "updatedReplicas"], 0);
    let replicas = int_field(o, &["status", "replicas"], 0);
    let partition = int_field(
        o,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
        -1,
    );

    if spec > replicas {
        return in_progress("LessReplicas", format!("Replicas: {replicas}/{spec}"));
    }
    if spec > ready {
        return in_progress("LessReady", format!("Ready: {ready}/{spec}"));
    }
    if replicas > spec {
        return extra_pods(replicas, spec);
    }
    if partition != -1 {
        let expected = spec.saturating_sub(partition);
        if updated < expected {
            return in_progress("PartitionRollout", format!("updated: {updated}/{expected}"));
        }
        return Ok(StatusResult::current(format!(
            "Partition rollout complete. updated: {updated}"
        )));
    }
    if spec > current {
        return in_progress("LessCurrent", format!("current: {current}/{spec}"));
    }
    let current_revision = str_field(o, &["status", "currentRevision"], "");
    let update_revision = str_field(o, &["status", "updateRevision"], "");
    if current_revision != update_revision {
        return in_progress(
            "RevisionMismatch",
            "Waiting for updated revision to match current",
        );
    }
    Ok(StatusResult::current(format!(
        "All replicas scheduled as expected. Replicas: {replicas}"
    )))
}

/// DaemonSet (apps, extensions): both generations must be set, since the controller always
/// sets them once it has acted.
pub(crate) fn daemonset(input: &RuleInput<'_>) -> Result<StatusResult> {
    let o = input.object;
    let kind = input.kind;
    if strict_int(o, &["metadata", "generation"])?.is_none() {
        return in_progress(
            "NoGeneration",
            format!("{kind} metadata.generation not found"),
        );
    }
    if strict_int(o, &["status", "observedGeneration"])?.is_none() {
        return in_progress(
            "NoObservedGeneration",
            format!("{kind} status.observedGeneration not found"),
        );
    }
    let desired = int_field(o, &["status", "desiredNumberScheduled"], -1);
    let current = int_field(o, &["status", "currentNumberScheduled"], 0);
    let updated = int_field(o, &["status", "updatedNumberScheduled"], 0);
    let available = int_field(o, &["status", "numberAvailable"], 0);
    let ready = int_field(o, &["status", "numberReady"], 0);

    if desired == -1 {
        return in_progress("NoDesiredNumber", "Missing .status.desiredNumberScheduled");
    }
    if desired > current {
        return in_progress("LessCurrent", format!("Current: {current}/{desired}"));
    }
    if desired > updated {
        return in_progress("LessUpdated", format!("Updated: {updated}/{desired}"));
    }
    if desired > available {
        return in_progress("LessAvailable", format!("Available: {available}/{desired}"));
    }
    if desired > ready {
        return in_progress("LessReady", format!("Ready: {ready}/{desired}"));
    }
    Ok(StatusResult::current(format!(
        "All replicas scheduled as expected. Replicas: {desired}"
    )))
}

/// ReplicaSet (apps, extensions). A `ReplicaFailure` is InProgress, not Failed: the
/// generated Pods decide (see `generated.rs`).
pub(crate) fn replicaset(input: &RuleInput<'_>) -> Result<StatusResult> {
    let o = input.object;
    if input
        .conditions
        .iter()
        .any(|c| c.is("ReplicaFailure", "True"))
    {
        return in_progress("ReplicaFailure", "Replica Failure condition. Check Pods");
    }
    let spec = int_field(o, &["spec", "replicas"], 1);
    let replicas = int_field(o, &["status", "replicas"], 0);
    let ready = int_field(o, &["status", "readyReplicas"], 0);
    let available = int_field(o, &["status", "availableReplicas"], 0);
    let labelled = int_field(o, &["status", "fullyLabeledReplicas"], 0);

    if spec > labelled {
        return in_progress("LessLabelled", format!("Labelled: {labelled}/{spec}"));
    }
    if spec > available {
        return in_progress("LessAvailable", format!("Available: {available}/{spec}"));
    }
    if spec > ready {
        return in_progress("LessReady", format!("Ready: {ready}/{spec}"));
    }
    if replicas > spec {
        return extra_pods(replicas, spec);
    }
    Ok(StatusResult::current(format!(
        "ReplicaSet is available. Replicas: {replicas}"
    )))
}

fn in_progress(reason: &str, message: impl Into<String>) -> Result<StatusResult> {
    Ok(StatusResult::in_progress(reason, message))
}

fn extra_pods(replicas: i64, spec: i64) -> Result<StatusResult> {
    in_progress(
        "ExtraPods",
        format!("Pending termination: {}", replicas.saturating_sub(spec)),
    )
}

#[cfg(test)]
mod tests {
    use crate::status::{compute, Error, Status, StatusResult};
    use serde_json::{json, Value};

    fn obj(api_version: &str, kind: &str, spec: Value, status: Value) -> Value {
        json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": "x", "namespace": "ns", "generation": 1},
            "spec": spec, "status": status})
    }

    fn check_in_progress(o: &Value, reason: &str, message: &str) {
        assert_eq!(
            compute(o).unwrap(),
            StatusResult::in_progress(reason, message),
            "{o}"
        );
    }

    fn check_current(o: &Value, message: &str) {
        assert_eq!(compute(o).unwrap(), StatusResult::current(message), "{o}");
    }

    // ----- Deployment -----

    fn deploy(spec: Value, status: Value) -> Value {
        obj("apps/v1", "Deployment", spec, status)
    }

    fn deploy_conditions() -> Value {
        json!([
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            {"type": "Available", "status": "True"}
        ])
    }

    #[test]
    fn deployment_progress_deadline_exceeded_is_failed() {
        let o = deploy(
            json!({"replicas": 1}),
            json!({"replicas": 1, "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"x-1\" has timed out progressing."}]}),
        );
        let r = compute(&o).unwrap();
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.message, "Progress deadline exceeded");
        assert_eq!(r.conditions.len(), 1);
        assert_eq!(r.conditions[0].reason, "ProgressDeadlineExceeded");
        assert_eq!(
            r.conditions[0].message,
            "ReplicaSet \"x-1\" has timed out progressing."
        );
    }

    #[test]
    fn deployment_replica_checks_in_order() {
        let conds = deploy_conditions();
        check_in_progress(
            &deploy(
                json!({"replicas": 3}),
                json!({"replicas": 2, "conditions": conds}),
            ),
            "LessReplicas",
            "Replicas: 2/3",
        );
        check_in_progress(
            &deploy(
                json!({"replicas": 3}),
                json!({"replicas": 3, "updatedReplicas": 2, "conditions": conds}),
            ),
            "LessUpdated",
            "Updated: 2/3",
        );
        check_in_progress(
            &deploy(
                json!({"replicas": 3}),
                json!({"replicas": 5, "updatedReplicas": 3, "conditions": conds}),
            ),
            "ExtraPods",
            "Pending termination: 2",
        );
        check_in_progress(
            &deploy(
                json!({"replicas": 3}),
                json!({"replicas": 3, "updatedReplicas": 4, "availableReplicas": 2, "conditions": conds}),
            ),
            "LessAvailable",
            "Available: 2/4",
        );
        check_in_progress(
            &deploy(
                json!({"replicas": 3}),
                json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 2, "conditions": conds}),
            ),
            "LessReady",
            "Ready: 2/3",
        );
    }

    #[test]
    fn deployment_defaults() {
        // No status at all: spec replicas default 1, counts 0.
        check_in_progress(
            &deploy(json!({}), json!(null)),
            "LessReplicas",
            "Replicas: 0/1",
        );
        // Non-integer counts count as missing.
        check_in_progress(
            &deploy(json!({"replicas": "3"}), json!({"replicas": 1.0})),
            "LessReplicas",
            "Replicas: 0/1",
        );
    }

    fn all_counts(n: i64) -> Value {
        json!({"replicas": n, "updatedReplicas": n, "availableReplicas": n, "readyReplicas": n})
    }

    #[test]
    fn deployment_progressing_and_available() {
        // With a deadline, progressing needs Progressing=True NewReplicaSetAvailable.
        let mut status = all_counts(2);
        status["conditions"] = json!([{"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]);
        check_in_progress(
            &deploy(
                json!({"replicas": 2, "progressDeadlineSeconds": 600}),
                status.clone(),
            ),
            "ReplicaSetNotAvailable",
            "ReplicaSet not Available",
        );
        // Without a deadline (missing, or MaxInt32) it is progressing from the start.
        for spec in [
            json!({"replicas": 2}),
            json!({"replicas": 2, "progressDeadlineSeconds": 2147483647}),
        ] {
            check_current(
                &deploy(spec, status.clone()),
                "Deployment is available. Replicas: 2",
            );
        }
        // A non-integer deadline counts as missing.
        check_current(
            &deploy(
                json!({"replicas": 2, "progressDeadlineSeconds": "600"}),
                status,
            ),
            "Deployment is available. Replicas: 2",
        );
        // Not available.
        let mut status = all_counts(2);
        status["conditions"] = json!([{"type": "Available", "status": "False"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]);
        check_in_progress(
            &deploy(
                json!({"replicas": 2, "progressDeadlineSeconds": 600}),
                status,
            ),
            "DeploymentNotAvailable",
            "Deployment not Available",
        );
        // Progressing=False with NewReplicaSetAvailable does not count.
        let mut status = all_counts(2);
        status["conditions"] = json!([{"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "False", "reason": "NewReplicaSetAvailable"}]);
        check_in_progress(
            &deploy(
                json!({"replicas": 2, "progressDeadlineSeconds": 600}),
                status,
            ),
            "ReplicaSetNotAvailable",
            "ReplicaSet not Available",
        );
    }

    #[test]
    fn deployment_current() {
        let mut status = all_counts(3);
        status["conditions"] = deploy_conditions();
        check_current(
            &deploy(
                json!({"replicas": 3, "progressDeadlineSeconds": 600}),
                status,
            ),
            "Deployment is available. Replicas: 3",
        );
        // Scaled to zero.
        let mut status = all_counts(0);
        status["conditions"] = deploy_conditions();
        check_current(
            &deploy(json!({"replicas": 0}), status),
            "Deployment is available. Replicas: 0",
        );
    }

    #[test]
    fn deployment_in_extensions() {
        let o = obj("extensions/v1beta1", "Deployment", json!({}), json!({}));
        check_in_progress(&o, "LessReplicas", "Replicas: 0/1");
    }

    #[test]
    fn extreme_counts_do_not_overflow() {
        let o = deploy(json!({"replicas": i64::MIN}), json!({"replicas": i64::MAX}));
        let r = compute(&o).unwrap();
        assert_eq!(r.message, format!("Pending termination: {}", i64::MAX));
        let sts = obj(
            "apps/v1",
            "StatefulSet",
            json!({"replicas": i64::MIN, "updateStrategy": {"rollingUpdate": {"partition": i64::MAX}}}),
            json!({"replicas": i64::MIN, "readyReplicas": i64::MIN}),
        );
        assert!(compute(&sts).is_ok());
    }

    // ----- StatefulSet -----

    fn sts(spec: Value, status: Value) -> Value {
        obj("apps/v1", "StatefulSet", spec, status)
    }

    #[test]
    fn statefulset_on_delete_is_current() {
        check_current(
            &sts(
                json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}}),
                json!({}),
            ),
            "StatefulSet is using the ondelete update strategy",
        );
    }

    #[test]
    fn statefulset_checks_in_order() {
        check_in_progress(
            &sts(json!({"replicas": 3}), json!({"replicas": 1})),
            "LessReplicas",
            "Replicas: 1/3",
        );
        check_in_progress(
            &sts(json!({}), json!(null)),
            "LessReplicas",
            "Replicas: 0/1",
        );
        check_in_progress(
            &sts(
                json!({"replicas": 3}),
                json!({"replicas": 3, "readyReplicas": 2}),
            ),
            "LessReady",
            "Ready: 2/3",
        );
        check_in_progress(
            &sts(
                json!({"replicas": 3}),
                json!({"replicas": 4, "readyReplicas": 4}),
            ),
            "ExtraPods",
            "Pending termination: 1",
        );
        check_in_progress(
            &sts(
                json!({"replicas": 3}),
                json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 2}),
            ),
            "LessCurrent",
            "current: 2/3",
        );
        check_in_progress(
            &sts(
                json!({"replicas": 3}),
                json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
                    "currentRevision": "a", "updateRevision": "b"}),
            ),
            "RevisionMismatch",
            "Waiting for updated revision to match current",
        );
        check_current(
            &sts(
                json!({"replicas": 3}),
                json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
                    "currentRevision": "a", "updateRevision": "a"}),
            ),
            "All replicas scheduled as expected. Replicas: 3",
        );
        // Both revisions missing are equal.
        check_current(
            &sts(
                json!({"replicas": 1}),
                json!({"replicas": 1, "readyReplicas": 1, "currentReplicas": 1}),
            ),
            "All replicas scheduled as expected. Replicas: 1",
        );
    }

    #[test]
    fn statefulset_partition() {
        let spec = |p: Value| json!({"replicas": 4, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": p}}});
        let status = |updated: i64| {
            json!({"replicas": 4, "readyReplicas": 4, "updatedReplicas": updated,
            "currentReplicas": 1, "currentRevision": "a", "updateRevision": "b"})
        };
        check_in_progress(
            &sts(spec(json!(2)), status(1)),
            "PartitionRollout",
            "updated: 1/2",
        );
        check_current(
            &sts(spec(json!(2)), status(2)),
            "Partition rollout complete. updated: 2",
        );
        // 0 counts as set: all 4 must be updated, and currentReplicas/revisions are not checked.
        check_in_progress(
            &sts(spec(json!(0)), status(3)),
            "PartitionRollout",
            "updated: 3/4",
        );
        check_current(
            &sts(spec(json!(0)), status(4)),
            "Partition rollout complete. updated: 4",
        );
        // A non-integer partition counts as missing: the LessCurrent check applies.
        check_in_progress(
            &sts(spec(json!("2")), status(4)),
            "LessCurrent",
            "current: 1/4",
        );
    }

    // ----- DaemonSet -----

    fn ds(meta_generation: Option<i64>, status: Value) -> Value {
        let mut o = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}, "status": status});
        if let Some(g) = meta_generation {
            o["metadata"]["generation"] = json!(g);
        }
        o
    }

    #[test]
    fn daemonset_generations_must_be_set() {
        check_in_progress(
            &ds(None, json!({"observedGeneration": 1})),
            "NoGeneration",
            "DaemonSet metadata.generation not found",
        );
        check_in_progress(
            &ds(Some(1), json!({})),
            "NoObservedGeneration",
            "DaemonSet status.observedGeneration not found",
        );
        check_in_progress(
            &ds(Some(1), json!(null)),
            "NoObservedGeneration",
            "DaemonSet status.observedGeneration not found",
        );
        let o = json!({"apiVersion": "extensions/v1beta1", "kind": "DaemonSet", "status": {}});
        check_in_progress(
            &o,
            "NoGeneration",
            "DaemonSet metadata.generation not found",
        );
    }

    #[test]
    fn daemonset_malformed_observed_generation_is_an_error() {
        // generation absent lets step 2 skip; the DaemonSet rule reports NoGeneration first.
        let o = ds(None, json!({"observedGeneration": "1"}));
        check_in_progress(
            &o,
            "NoGeneration",
            "DaemonSet metadata.generation not found",
        );
        let o = ds(Some(1), json!({"observedGeneration": "1"}));
        assert!(
            matches!(compute(&o), Err(Error::WrongType { field, .. }) if field == "status.observedGeneration")
        );
    }

    #[test]
    fn daemonset_checks_in_order() {
        let base = |extra: Value| {
            let mut s = json!({"observedGeneration": 1});
            for (k, v) in extra.as_object().unwrap() {
                s[k] = v.clone();
            }
            ds(Some(1), s)
        };
        check_in_progress(
            &base(json!({})),
            "NoDesiredNumber",
            "Missing .status.desiredNumberScheduled",
        );
        check_in_progress(
            &base(json!({"desiredNumberScheduled": 1.0})),
            "NoDesiredNumber",
            "Missing .status.desiredNumberScheduled",
        );
        check_in_progress(
            &base(json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 2})),
            "LessCurrent",
            "Current: 2/3",
        );
        check_in_progress(
            &base(
                json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 1}),
            ),
            "LessUpdated",
            "Updated: 1/3",
        );
        check_in_progress(
            &base(
                json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                "numberAvailable": 0}),
            ),
            "LessAvailable",
            "Available: 0/3",
        );
        check_in_progress(
            &base(
                json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                "numberAvailable": 3, "numberReady": 2}),
            ),
            "LessReady",
            "Ready: 2/3",
        );
        check_current(
            &base(
                json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                "numberAvailable": 3, "numberReady": 3}),
            ),
            "All replicas scheduled as expected. Replicas: 3",
        );
        check_current(
            &base(json!({"desiredNumberScheduled": 0})),
            "All replicas scheduled as expected. Replicas: 0",
        );
    }

    // ----- ReplicaSet -----

    fn rs(spec: Value, status: Value) -> Value {
        obj("apps/v1", "ReplicaSet", spec, status)
    }

    #[test]
    fn replicaset_replica_failure_is_in_progress() {
        let o = rs(
            json!({"replicas": 1}),
            json!({"replicas": 1, "fullyLabeledReplicas": 1, "availableReplicas": 1, "readyReplicas": 1,
                "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]}),
        );
        check_in_progress(
            &o,
            "ReplicaFailure",
            "Replica Failure condition. Check Pods",
        );
        let o = rs(
            json!({"replicas": 1}),
            json!({"replicas": 1, "fullyLabeledReplicas": 1, "availableReplicas": 1, "readyReplicas": 1,
                "conditions": [{"type": "ReplicaFailure", "status": "False"}]}),
        );
        check_current(&o, "ReplicaSet is available. Replicas: 1");
    }

    #[test]
    fn replicaset_checks_in_order() {
        check_in_progress(&rs(json!({}), json!({})), "LessLabelled", "Labelled: 0/1");
        check_in_progress(
            &rs(
                json!({"replicas": 2}),
                json!({"fullyLabeledReplicas": 2, "availableReplicas": 1}),
            ),
            "LessAvailable",
            "Available: 1/2",
        );
        check_in_progress(
            &rs(
                json!({"replicas": 2}),
                json!({"fullyLabeledReplicas": 2, "availableReplicas": 2, "readyReplicas": 1}),
            ),
            "LessReady",
            "Ready: 1/2",
        );
        check_in_progress(
            &rs(
                json!({"replicas": 2}),
                json!({"replicas": 3, "fullyLabeledReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}),
            ),
            "ExtraPods",
            "Pending termination: 1",
        );
        check_current(
            &rs(
                json!({"replicas": 2}),
                json!({"replicas": 2, "fullyLabeledReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}),
            ),
            "ReplicaSet is available. Replicas: 2",
        );
        check_current(
            &rs(json!({"replicas": 0}), json!({})),
            "ReplicaSet is available. Replicas: 0",
        );
        let o = obj("extensions/v1beta1", "ReplicaSet", json!({}), json!({}));
        check_in_progress(&o, "LessLabelled", "Labelled: 0/1");
    }
}
