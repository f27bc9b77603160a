//! The Pod rule, by `status.phase`.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::conditions::{self, ObjectCondition};
use super::fields::{self, lookup, str_field};
use super::types::RuleInput;
use super::{Error, Result, StatusResult, SCHEDULE_WINDOW};

/// Pod: Succeeded and Failed phases are Current (a finished Pod is done, even if it did not
/// succeed); Running is Current once Ready, Failed when a container crash-loops; Pending is
/// Failed when it could not be scheduled for [`SCHEDULE_WINDOW`].
pub(crate) fn pod(input: &RuleInput<'_>) -> Result<StatusResult> {
    let object = input.object;
    let phase = str_field(object, &["status", "phase"], "");
    match phase {
        "Succeeded" => Ok(StatusResult::current("Pod has completed successfully")),
        "Failed" => Ok(StatusResult::current(
            "Pod has completed, but not successfully",
        )),
        "Running" => {
            if conditions::find(input.conditions, "Ready", "True").is_some() {
                return Ok(StatusResult::current("Pod is Ready"));
            }
            let crash_looping = crash_looping_containers(object);
            if !crash_looping.is_empty() {
                return Ok(StatusResult::failed(
                    "ContainerCrashLooping",
                    format!("Containers in CrashLoop state: {}", crash_looping.join(",")),
                ));
            }
            Ok(StatusResult::in_progress(
                "PodRunningNotReady",
                "Pod is running but is not Ready",
            ))
        }
        "Pending" => {
            if !is_unschedulable(input.conditions) {
                return Ok(StatusResult::in_progress(
                    "PodPending",
                    "Pod is in the Pending phase",
                ));
            }
            let created = str_field(object, &["metadata", "creationTimestamp"], "")
                .parse::<Timestamp>()
                .ok();
            match created {
                Some(created) if within_schedule_window(created, fields::timestamp(input.now)?) => {
                    Ok(StatusResult::in_progress(
                        "PodNotScheduled",
                        "Pod has not been scheduled",
                    ))
                }
                _ => Ok(StatusResult::failed(
                    "PodUnschedulable",
                    "Pod could not be scheduled",
                )),
            }
        }
        "" => Ok(StatusResult::in_progress(
            "PodNotObserved",
            "Pod phase not available",
        )),
        other => Err(Error::UnknownPhase {
            phase: other.to_owned(),
        }),
    }
}

/// Whether the first `PodScheduled=False` condition has reason `Unschedulable`.
pub(crate) fn is_unschedulable(conditions: &[ObjectCondition]) -> bool {
    conditions::find(conditions, "PodScheduled", "False")
        .is_some_and(|c| c.reason == "Unschedulable")
}

/// Whether a Pod created at `created` is younger than the window at `now`.
fn within_schedule_window(created: Timestamp, now: Timestamp) -> bool {
    let age_ns = now.as_nanosecond() - created.as_nanosecond();
    age_ns < SCHEDULE_WINDOW.as_nanos() as i128
}

/// Names of containers waiting with reason `CrashLoopBackOff`, in order. Malformed entries
/// (not objects, no name, no waiting state) are skipped.
fn crash_looping_containers(object: &Value) -> Vec<&str> {
    let Some(statuses) = lookup(object, &["status", "containerStatuses"]).and_then(Value::as_array)
    else {
        return Vec::new();
    };
    statuses
        .iter()
        .filter_map(|cs| {
            let name = lookup(cs, &["name"])?.as_str()?;
            let reason = lookup(cs, &["state", "waiting", "reason"])?.as_str()?;
            (reason == "CrashLoopBackOff").then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use crate::status::{compute, compute_at, Error, Status, StatusResult};
    use serde_json::{json, Value};

    fn pod(status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns",
            "creationTimestamp": "2024-01-01T00:00:00Z"}, "status": status})
    }

    fn at(secs_after_creation: u64) -> SystemTime {
        // 2024-01-01T00:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200 + secs_after_creation)
    }

    fn unschedulable() -> Value {
        json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]})
    }

    #[test]
    fn succeeded_and_failed_are_current() {
        assert_eq!(
            compute(&pod(json!({"phase": "Succeeded"}))).unwrap(),
            StatusResult::current("Pod has completed successfully")
        );
        assert_eq!(
            compute(&pod(json!({"phase": "Failed"}))).unwrap(),
            StatusResult::current("Pod has completed, but not successfully")
        );
    }

    #[test]
    fn running_ready_is_current() {
        let o = pod(json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        assert_eq!(compute(&o).unwrap(), StatusResult::current("Pod is Ready"));
    }

    #[test]
    fn running_crash_looping_is_failed() {
        let o = pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "a", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                {"name": "b", "state": {"running": {}}},
                {"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                {"name": "d", "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::failed(
                "ContainerCrashLooping",
                "Containers in CrashLoop state: a,c"
            )
        );
    }

    #[test]
    fn running_not_ready_is_in_progress() {
        let o = pod(json!({"phase": "Running"}));
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::in_progress("PodRunningNotReady", "Pod is running but is not Ready")
        );
    }

    #[test]
    fn malformed_container_statuses_are_skipped() {
        for statuses in [
            json!("nope"),
            json!({"name": "x"}),
            json!([1, null, "s", [], {}]),
            json!([{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]),
            json!([{"name": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]),
            json!([{"name": "a", "state": "waiting"}]),
            json!([{"name": "a", "state": {"waiting": "CrashLoopBackOff"}}]),
            json!([{"name": "a", "state": {"waiting": {"reason": 7}}}]),
        ] {
            let o = pod(json!({"phase": "Running", "containerStatuses": statuses}));
            assert_eq!(compute(&o).unwrap().status, Status::InProgress, "{o}");
        }
        // A malformed entry does not hide a well-formed crash-looping one.
        let o = pod(json!({"phase": "Running", "containerStatuses": [
            7, {"name": "ok", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        assert_eq!(
            compute(&o).unwrap().message,
            "Containers in CrashLoop state: ok"
        );
    }

    #[test]
    fn pending_is_in_progress() {
        let o = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SomethingElse"}]}));
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::in_progress("PodPending", "Pod is in the Pending phase")
        );
        let o = pod(json!({"phase": "Pending"}));
        assert_eq!(compute(&o).unwrap().conditions[0].reason, "PodPending");
    }

    #[test]
    fn unschedulable_within_window_is_in_progress() {
        for secs in [0, 14] {
            assert_eq!(
                compute_at(&pod(unschedulable()), at(secs)).unwrap(),
                StatusResult::in_progress("PodNotScheduled", "Pod has not been scheduled")
            );
        }
        // A creation timestamp in the future is within the window too.
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_100);
        assert_eq!(
            compute_at(&pod(unschedulable()), early).unwrap().status,
            Status::InProgress
        );
    }

    #[test]
    fn unschedulable_after_window_is_failed() {
        for secs in [15, 16, 3600] {
            assert_eq!(
                compute_at(&pod(unschedulable()), at(secs)).unwrap(),
                StatusResult::failed("PodUnschedulable", "Pod could not be scheduled")
            );
        }
    }

    #[test]
    fn unschedulable_without_creation_timestamp_is_failed() {
        for meta in [
            json!({}),
            json!({"creationTimestamp": "garbage"}),
            json!({"creationTimestamp": 5}),
        ] {
            let o = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": unschedulable()});
            assert_eq!(compute_at(&o, at(0)).unwrap().status, Status::Failed, "{o}");
        }
    }

    #[test]
    fn only_the_first_pod_scheduled_false_counts() {
        let o = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Other"},
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}));
        assert_eq!(
            compute_at(&o, at(100)).unwrap().conditions[0].reason,
            "PodPending"
        );
    }

    #[test]
    fn missing_phase_is_not_observed() {
        for status in [
            json!({}),
            json!({"phase": ""}),
            json!(null),
            json!({"phase": 3}),
        ] {
            assert_eq!(
                compute(&pod(status)).unwrap(),
                StatusResult::in_progress("PodNotObserved", "Pod phase not available")
            );
        }
    }

    #[test]
    fn unknown_phase_is_an_error() {
        assert_eq!(
            compute(&pod(json!({"phase": "Exploded"}))),
            Err(Error::UnknownPhase {
                phase: "Exploded".into()
            })
        );
        assert_eq!(
            compute(&pod(json!({"phase": "Exploded"})))
                .unwrap_err()
                .to_string(),
            "unknown phase Exploded"
        );
    }
}
