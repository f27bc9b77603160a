//! Type-specific rules, looked up by `group/Kind` (just `Kind` for the core group), version
//! ignored. The simple ones live here; Pods in `pod.rs`, workload controllers in
//! `workloads.rs`.

use std::time::SystemTime;

use serde_json::Value;

use super::conditions::ObjectCondition;
use super::fields::{int_field, str_field};
use super::{pod, workloads, Result, StatusResult};

/// What a rule sees: the object, its kind, its parsed conditions and the clock.
pub(crate) struct RuleInput<'a> {
    pub object: &'a Value,
    pub kind: &'a str,
    pub conditions: &'a [ObjectCondition],
    pub now: SystemTime,
}

/// A type-specific rule. Its answer is final.
pub(crate) type Rule = fn(&RuleInput<'_>) -> Result<StatusResult>;

/// The rule for objects of `group`/`kind`, if there is one.
pub(crate) fn rule_for(group: &str, kind: &str) -> Option<Rule> {
    let rule: Rule = match (group, kind) {
        ("", "Secret") | ("", "ConfigMap") | ("batch", "CronJob") => always_ready,
        ("", "Service") => service,
        ("", "PersistentVolumeClaim") => pvc,
        ("", "Pod") => pod::pod,
        ("apps" | "extensions", "Deployment") => workloads::deployment,
        ("apps", "StatefulSet") => workloads::statefulset,
        ("apps" | "extensions", "DaemonSet") => workloads::daemonset,
        ("apps" | "extensions", "ReplicaSet") => workloads::replicaset,
        ("policy", "PodDisruptionBudget") => pdb,
        ("batch", "Job") => job,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd,
        _ => return None,
    };
    Some(rule)
}

/// Secret, ConfigMap, batch/CronJob.
fn always_ready(_: &RuleInput<'_>) -> Result<StatusResult> {
    Ok(StatusResult::current("Resource is always ready"))
}

/// Service: a LoadBalancer without a cluster IP is still in progress.
fn service(input: &RuleInput<'_>) -> Result<StatusResult> {
    let spec_type = str_field(input.object, &["spec", "type"], "ClusterIP");
    let cluster_ip = str_field(input.object, &["spec", "clusterIP"], "");
    if spec_type == "LoadBalancer" && cluster_ip.is_empty() {
        return Ok(StatusResult::in_progress(
            "NoIPAssigned",
            "ClusterIP not set. Service type: LoadBalancer",
        ));
    }
    Ok(StatusResult::current("Service is ready"))
}

/// PersistentVolumeClaim: Current once Bound.
fn pvc(input: &RuleInput<'_>) -> Result<StatusResult> {
    let phase = str_field(input.object, &["status", "phase"], "unknown");
    if phase != "Bound" {
        return Ok(StatusResult::in_progress(
            "NotBound",
            format!("PVC is not Bound. phase: {phase}"),
        ));
    }
    Ok(StatusResult::current("PVC is Bound"))
}

/// policy/PodDisruptionBudget: the generation rule is the real gate.
fn pdb(_: &RuleInput<'_>) -> Result<StatusResult> {
    Ok(StatusResult::current(
        "AllowedDisruptions has been computed.",
    ))
}

/// batch/Job: Complete → Current, Failed → Failed, Suspended → Current (the first that is
/// true, as the conditions are listed), then started or not. A suspended Job (`spec.suspend`,
/// as Kueue creates them) is settled, not in progress: the spec's list predates the upstream
/// rule, and where they disagree the library wins (kubernetes-sigs/cli-utils `jobConditions`).
fn job(input: &RuleInput<'_>) -> Result<StatusResult> {
    let o = input.object;
    let parallelism = int_field(o, &["spec", "parallelism"], 1);
    let completions = int_field(o, &["spec", "completions"], parallelism);
    let succeeded = int_field(o, &["status", "succeeded"], 0);
    let active = int_field(o, &["status", "active"], 0);
    let failed = int_field(o, &["status", "failed"], 0);
    for c in input.conditions {
        if c.is("Complete", "True") {
            return Ok(StatusResult::current(format!(
                "Job Completed. succeeded: {succeeded}/{completions}"
            )));
        }
        if c.is("Failed", "True") {
            return Ok(StatusResult::failed(
                "JobFailed",
                format!("Job Failed. failed: {failed}/{completions}"),
            ));
        }
        if c.is("Suspended", "True") {
            return Ok(StatusResult::current("Job is suspended"));
        }
    }
    if str_field(o, &["status", "startTime"], "").is_empty() {
        return Ok(StatusResult::in_progress(
            "JobNotStarted",
            "Job not started",
        ));
    }
    Ok(StatusResult::current(format!(
        "Job in progress. success:{succeeded}, active: {active}, failed: {failed}"
    )))
}

/// apiextensions.k8s.io/CustomResourceDefinition: names accepted and established.
fn crd(input: &RuleInput<'_>) -> Result<StatusResult> {
    for c in input.conditions {
        if c.is("NamesAccepted", "False") {
            return Ok(StatusResult::failed(&c.reason, &c.message));
        }
        if c.is("Established", "False") && c.reason != "Installing" {
            return Ok(StatusResult::failed(&c.reason, &c.message));
        }
        if c.is("Established", "True") {
            return Ok(StatusResult::current("CRD is established"));
        }
    }
    Ok(StatusResult::in_progress(
        "Installing",
        "Install in progress",
    ))
}

#[cfg(test)]
mod tests {
    use crate::status::{compute, Status, StatusResult};
    use serde_json::{json, Value};

    fn with_status(api_version: &str, kind: &str, spec: Value, status: Value) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "namespace": "ns"},
            "spec": spec, "status": status})
    }

    fn assert_in_progress(o: &Value, reason: &str, message: &str) {
        assert_eq!(
            compute(o).unwrap(),
            StatusResult::in_progress(reason, message),
            "{o}"
        );
    }

    fn assert_current(o: &Value, message: &str) {
        assert_eq!(compute(o).unwrap(), StatusResult::current(message), "{o}");
    }

    #[test]
    fn always_ready_kinds() {
        for (api, kind) in [
            ("v1", "Secret"),
            ("v1", "ConfigMap"),
            ("batch/v1", "CronJob"),
        ] {
            assert_current(
                &json!({"apiVersion": api, "kind": kind}),
                "Resource is always ready",
            );
        }
        // CronJob only in batch; ConfigMap only in core.
        assert_current(
            &json!({"apiVersion": "other/v1", "kind": "CronJob"}),
            "Resource is current",
        );
    }

    #[test]
    fn service() {
        let lb_no_ip = with_status("v1", "Service", json!({"type": "LoadBalancer"}), json!({}));
        assert_in_progress(
            &lb_no_ip,
            "NoIPAssigned",
            "ClusterIP not set. Service type: LoadBalancer",
        );
        let lb_empty_ip = with_status(
            "v1",
            "Service",
            json!({"type": "LoadBalancer", "clusterIP": ""}),
            json!({}),
        );
        assert_eq!(compute(&lb_empty_ip).unwrap().status, Status::InProgress);
        let lb = with_status(
            "v1",
            "Service",
            json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1"}),
            json!({}),
        );
        assert_current(&lb, "Service is ready");
        // Type defaults to ClusterIP: no IP needed.
        assert_current(
            &with_status("v1", "Service", json!({}), json!(null)),
            "Service is ready",
        );
        // A non-string type takes the default.
        assert_current(
            &with_status("v1", "Service", json!({"type": 3}), json!({})),
            "Service is ready",
        );
    }

    #[test]
    fn pvc() {
        let bound = with_status(
            "v1",
            "PersistentVolumeClaim",
            json!({}),
            json!({"phase": "Bound"}),
        );
        assert_current(&bound, "PVC is Bound");
        let pending = with_status(
            "v1",
            "PersistentVolumeClaim",
            json!({}),
            json!({"phase": "Pending"}),
        );
        assert_in_progress(&pending, "NotBound", "PVC is not Bound. phase: Pending");
        let none = with_status("v1", "PersistentVolumeClaim", json!({}), json!({}));
        assert_in_progress(&none, "NotBound", "PVC is not Bound. phase: unknown");
    }

    #[test]
    fn pdb() {
        let o = with_status("policy/v1", "PodDisruptionBudget", json!({}), json!({}));
        assert_current(&o, "AllowedDisruptions has been computed.");
        // The generation rule gates it.
        let o = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"generation": 2}, "status": {"observedGeneration": 1}});
        assert_eq!(compute(&o).unwrap().status, Status::InProgress);
    }

    #[test]
    fn job_complete() {
        let o = with_status(
            "batch/v1",
            "Job",
            json!({"completions": 3}),
            json!({"succeeded": 3, "conditions": [
                {"type": "Complete", "status": "True"}, {"type": "Failed", "status": "True"}]}),
        );
        assert_current(&o, "Job Completed. succeeded: 3/3");
    }

    #[test]
    fn job_failed() {
        let o = with_status(
            "batch/v1",
            "Job",
            json!({"parallelism": 2}),
            json!({"failed": 4, "conditions": [
                {"type": "Complete", "status": "False"}, {"type": "Failed", "status": "True"}]}),
        );
        // completions defaults to parallelism.
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::failed("JobFailed", "Job Failed. failed: 4/2")
        );
    }

    #[test]
    fn job_not_started() {
        let o = with_status("batch/v1", "Job", json!({}), json!({}));
        assert_in_progress(&o, "JobNotStarted", "Job not started");
        let o = with_status("batch/v1", "Job", json!({}), json!({"startTime": ""}));
        assert_in_progress(&o, "JobNotStarted", "Job not started");
    }

    #[test]
    fn job_suspended_is_current() {
        // Created suspended: no startTime, Suspended=True.
        let o = with_status(
            "batch/v1",
            "Job",
            json!({"suspend": true}),
            json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
        );
        assert_current(&o, "Job is suspended");
        // Resumed (Suspended=False) and not started yet: in progress again.
        let o = with_status(
            "batch/v1",
            "Job",
            json!({}),
            json!({"conditions": [{"type": "Suspended", "status": "False"}]}),
        );
        assert_in_progress(&o, "JobNotStarted", "Job not started");
        // The first true condition decides: a failed Job that is also suspended is failed.
        let o = with_status(
            "batch/v1",
            "Job",
            json!({}),
            json!({"failed": 1, "conditions": [
                {"type": "Failed", "status": "True"}, {"type": "Suspended", "status": "True"}]}),
        );
        assert_eq!(compute(&o).unwrap().status, Status::Failed);
    }

    #[test]
    fn job_running() {
        let o = with_status(
            "batch/v1",
            "Job",
            json!({"parallelism": 2, "completions": 5}),
            json!({"startTime": "2024-01-01T00:00:00Z", "succeeded": 1, "active": 2, "failed": 1,
                "conditions": [{"type": "Complete", "status": "False"}]}),
        );
        assert_current(&o, "Job in progress. success:1, active: 2, failed: 1");
    }

    #[test]
    fn job_counts_default_when_not_integers() {
        let o = with_status(
            "batch/v1",
            "Job",
            json!({"parallelism": "2", "completions": 1.5}),
            json!({"succeeded": "x", "conditions": [{"type": "Complete", "status": "True"}]}),
        );
        assert_current(&o, "Job Completed. succeeded: 0/1");
    }

    #[test]
    fn crd_established() {
        let o = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({"conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": "True"}]}),
        );
        assert_current(&o, "CRD is established");
    }

    #[test]
    fn crd_names_not_accepted() {
        let o = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({"conditions": [
                {"type": "NamesAccepted", "status": "False", "reason": "NameConflict", "message": "taken"},
                {"type": "Established", "status": "True"}]}),
        );
        assert_eq!(
            compute(&o).unwrap(),
            StatusResult::failed("NameConflict", "taken")
        );
    }

    #[test]
    fn crd_not_established() {
        let o = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({"conditions": [
                {"type": "Established", "status": "False", "reason": "Broken", "message": "bad"}]}),
        );
        assert_eq!(compute(&o).unwrap(), StatusResult::failed("Broken", "bad"));
    }

    #[test]
    fn crd_installing() {
        let o = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({"conditions": [
                {"type": "Established", "status": "False", "reason": "Installing"}]}),
        );
        assert_in_progress(&o, "Installing", "Install in progress");
        let none = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({}),
        );
        assert_in_progress(&none, "Installing", "Install in progress");
        // First match wins: Established=True before NamesAccepted=False.
        let o = with_status(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({}),
            json!({"conditions": [
                {"type": "Established", "status": "True"},
                {"type": "NamesAccepted", "status": "False", "reason": "X"}]}),
        );
        assert_current(&o, "CRD is established");
    }
}
