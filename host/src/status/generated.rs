//! Statuses of controllers from the objects they generate: a Deployment's ReplicaSets, and
//! a ReplicaSet's or StatefulSet's Pods. Pure: the generated objects are given, already
//! fetched (see `live.rs` for reading them from the API).

use std::fmt;
use std::time::SystemTime;

use serde_json::Value;

use super::conditions;
use super::fields::{self, str_field, strict_lookup};
use super::generic::compute_at;
use super::selector::LabelSelector;
use super::{pod, Error, Result, Status, StatusResult};

/// An object's identity: group, kind, namespace and name (no version). Cluster-scoped
/// objects have an empty namespace; the core group is empty.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ObjectIdentity {
    /// API group (`""` for core).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectIdentity {
    /// The identity of an object given as JSON (missing fields are empty).
    pub fn of(object: &Value) -> Self {
        ObjectIdentity {
            group: fields::group(object).to_owned(),
            kind: fields::kind(object).to_owned(),
            namespace: str_field(object, &["metadata", "namespace"], "").to_owned(),
            name: str_field(object, &["metadata", "name"], "").to_owned(),
        }
    }
}

impl fmt::Display for ObjectIdentity {
    /// `Kind.group namespace/name`, or `Kind name` for core, cluster-scoped objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        f.write_str(" ")?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        f.write_str(&self.name)
    }
}

/// The status of one object, with the statuses of the objects it generated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceStatus {
    /// Which object.
    pub identity: ObjectIdentity,
    /// Its status.
    pub status: Status,
    /// The reason of the implied `Reconciling`/`Stalled` condition (`""` when there is none).
    pub reason: String,
    /// Why it has this status (the error's text for Unknown).
    pub message: String,
    /// Why the status is Unknown, when it could not be computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Statuses of the generated objects (ReplicaSets of a Deployment, Pods of a ReplicaSet
    /// or StatefulSet), sorted by identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<ResourceStatus>,
}

impl ResourceStatus {
    /// The status computed by [`compute`](super::compute) for `identity`.
    pub fn from_result(identity: ObjectIdentity, result: &StatusResult) -> Self {
        ResourceStatus {
            identity,
            status: result.status,
            reason: result.reason().to_owned(),
            message: result.message.clone(),
            error: None,
            generated: Vec::new(),
        }
    }

    /// NotFound, "Resource not found": the object does not exist (or was deleted).
    pub fn not_found(identity: ObjectIdentity) -> Self {
        ResourceStatus {
            identity,
            status: Status::NotFound,
            reason: String::new(),
            message: "Resource not found".to_owned(),
            error: None,
            generated: Vec::new(),
        }
    }

    /// Unknown, with `error` attached (and as the message).
    pub fn unknown(identity: ObjectIdentity, error: &dyn std::error::Error) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        ResourceStatus {
            identity,
            status: Status::Unknown,
            reason: String::new(),
            message: text.clone(),
            error: Some(text),
            generated: Vec::new(),
        }
    }

    /// Whether this object is InProgress because it is, or (transitively) generates, a Pod
    /// waiting to be scheduled within [`SCHEDULE_WINDOW`](super::SCHEDULE_WINDOW): such an
    /// object should be re-read once the window has passed, without any new event. A Pod may
    /// then turn Failed; a controller does not (an unschedulable Pod is not one of its failed
    /// Pods, as in cli-utils), but its re-read refreshes the statuses of its generated Pods.
    pub fn is_unschedulable(&self) -> bool {
        if self.error.is_some() || self.status != Status::InProgress {
            return false;
        }
        let is_pod = self.identity.group.is_empty() && self.identity.kind == "Pod";
        (is_pod && self.reason == "PodNotScheduled")
            || self.generated.iter().any(ResourceStatus::is_unschedulable)
    }
}

/// Computes the status of `object` with its generated objects, reading the clock.
/// See [`compute_with_generated_at`].
pub fn compute_with_generated(object: &Value, candidates: &[Value]) -> ResourceStatus {
    compute_with_generated_at(object, candidates, SystemTime::now())
}

/// Computes the status of `object` as of `now`, with the statuses of the objects it
/// generated, picked from `candidates` (typically the ReplicaSets and Pods of its namespace;
/// others are ignored).
///
/// - A Deployment (apps, extensions): its ReplicaSets are the `candidates` of kind ReplicaSet
///   in its namespace matching its `spec.selector`; each is computed as below with its own
///   Pods. The Deployment's own status is plain [`compute`](super::compute).
/// - A ReplicaSet (apps, extensions) or StatefulSet (apps): its Pods are the `candidates` of
///   kind Pod in its namespace matching its `spec.selector`. If its own status is InProgress
///   and any Pod is Failed, it is Failed "{n} pods have failed" — Pods being deleted and
///   unschedulable Pods do not count.
/// - Any other object: plain [`compute`](super::compute), no generated objects.
///
/// Never fails: a compute error, a missing selector ("no selector found") or an invalid one
/// gives Unknown with the error attached.
pub fn compute_with_generated_at(
    object: &Value,
    candidates: &[Value],
    now: SystemTime,
) -> ResourceStatus {
    match Controller::of(object) {
        Some(Controller::Deployment) => deployment(object, candidates, now),
        Some(Controller::PodController) => pod_controller(object, candidates, now),
        None => plain(object, now),
    }
}

/// The kinds whose status looks at generated objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    /// Deployment → ReplicaSets → Pods.
    Deployment,
    /// ReplicaSet or StatefulSet → Pods.
    PodController,
}

impl Controller {
    /// Which controller `object` is, if any.
    pub(crate) fn of(object: &Value) -> Option<Self> {
        match (fields::group(object), fields::kind(object)) {
            ("apps" | "extensions", "Deployment") => Some(Controller::Deployment),
            ("apps" | "extensions", "ReplicaSet") | ("apps", "StatefulSet") => {
                Some(Controller::PodController)
            }
            _ => None,
        }
    }
}

/// Whether `object` is a ReplicaSet.
pub(crate) fn is_replicaset(object: &Value) -> bool {
    matches!(
        (fields::group(object), fields::kind(object)),
        ("apps" | "extensions", "ReplicaSet")
    )
}

/// Whether `object` is a Pod.
pub(crate) fn is_pod(object: &Value) -> bool {
    fields::group(object).is_empty() && fields::kind(object) == "Pod"
}

/// The controller's `spec.selector`.
pub(crate) fn selector_of(object: &Value) -> Result<LabelSelector> {
    match strict_lookup(object, &["spec", "selector"])? {
        None => Err(Error::NoSelector),
        Some(selector) => LabelSelector::from_json(selector),
    }
}

/// The `candidates` of the wanted kind in `object`'s namespace matching its selector.
fn select<'a>(
    object: &Value,
    candidates: &'a [Value],
    kind: fn(&Value) -> bool,
) -> Result<Vec<&'a Value>> {
    let selector = selector_of(object)?;
    let namespace = str_field(object, &["metadata", "namespace"], "");
    Ok(candidates
        .iter()
        .filter(|c| kind(c))
        .filter(|c| str_field(c, &["metadata", "namespace"], "") == namespace)
        .filter(|c| selector.matches_object(c))
        .collect())
}

fn plain(object: &Value, now: SystemTime) -> ResourceStatus {
    let identity = ObjectIdentity::of(object);
    match compute_at(object, now) {
        Ok(result) => ResourceStatus::from_result(identity, &result),
        Err(err) => ResourceStatus::unknown(identity, &err),
    }
}

fn deployment(object: &Value, candidates: &[Value], now: SystemTime) -> ResourceStatus {
    let identity = ObjectIdentity::of(object);
    let replicasets = match select(object, candidates, is_replicaset) {
        Ok(replicasets) => replicasets,
        Err(err) => return ResourceStatus::unknown(identity, &err),
    };
    let mut generated: Vec<ResourceStatus> = replicasets
        .into_iter()
        .map(|rs| pod_controller(rs, candidates, now))
        .collect();
    generated.sort_by(|a, b| a.identity.cmp(&b.identity));
    let mut status = plain(object, now);
    status.generated = generated;
    status
}

fn pod_controller(object: &Value, candidates: &[Value], now: SystemTime) -> ResourceStatus {
    let identity = ObjectIdentity::of(object);
    let pods = match select(object, candidates, is_pod) {
        Ok(pods) => pods,
        Err(err) => return ResourceStatus::unknown(identity, &err),
    };
    let mut generated = Vec::with_capacity(pods.len());
    let mut failed = 0usize;
    for pod in pods {
        let status = plain(pod, now);
        if status.status == Status::Failed && counts_as_failure(pod) {
            failed += 1;
        }
        generated.push(status);
    }
    generated.sort_by(|a, b| a.identity.cmp(&b.identity));

    let mut status = plain(object, now);
    status.generated = generated;
    if status.status == Status::InProgress && failed > 0 {
        status.status = Status::Failed;
        status.reason = String::new();
        status.message = format!("{failed} pods have failed");
    }
    status
}

/// Whether a Failed Pod makes its controller Failed: not when it is being deleted, nor when
/// it is merely unschedulable (transient: the cluster may grow).
fn counts_as_failure(pod: &Value) -> bool {
    let deleting = !str_field(pod, &["metadata", "deletionTimestamp"], "").is_empty();
    let unschedulable = conditions::read(pod)
        .map(|c| pod::is_unschedulable(&c))
        .unwrap_or(false);
    !deleting && !unschedulable
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;

    fn at(secs: u64) -> SystemTime {
        // 2024-01-01T00:00:00Z + secs
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200 + secs)
    }

    fn rs(name: &str, ns: &str, labels: Value, selector: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"replicas": 2, "selector": selector}, "status": status})
    }

    fn pod(name: &str, ns: &str, labels: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": status})
    }

    fn crash_looping() -> Value {
        json!({"phase": "Running", "containerStatuses": [
            {"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})
    }

    fn unschedulable() -> Value {
        json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]})
    }

    fn ready() -> Value {
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
    }

    fn in_progress_rs() -> Value {
        rs(
            "web-1",
            "ns",
            json!({"app": "web"}),
            json!({"matchLabels": {"app": "web"}}),
            json!({}),
        )
    }

    #[test]
    fn identity_of_and_display() {
        let id = ObjectIdentity::of(&in_progress_rs());
        assert_eq!(
            id,
            ObjectIdentity {
                group: "apps".into(),
                kind: "ReplicaSet".into(),
                namespace: "ns".into(),
                name: "web-1".into()
            }
        );
        assert_eq!(id.to_string(), "ReplicaSet.apps ns/web-1");
        let ns = ObjectIdentity::of(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        );
        assert_eq!(ns.to_string(), "Namespace a");
        assert_eq!(ObjectIdentity::of(&json!(5)), ObjectIdentity::default());
    }

    #[test]
    fn plain_objects_have_no_generated() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}});
        let s = compute_with_generated(&cm, &[pod("p", "ns", json!({}), ready())]);
        assert_eq!(s.status, Status::Current);
        assert_eq!(s.message, "Resource is always ready");
        assert_eq!(s.reason, "");
        assert!(s.generated.is_empty());
        assert!(s.error.is_none());
    }

    #[test]
    fn compute_error_is_unknown_with_the_error() {
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": {"phase": "Weird"}});
        let s = compute_with_generated(&bad, &[]);
        assert_eq!(s.status, Status::Unknown);
        assert_eq!(s.error.as_deref(), Some("unknown phase Weird"));
        assert_eq!(s.message, "unknown phase Weird");
    }

    #[test]
    fn replicaset_with_a_failed_pod_is_failed() {
        let candidates = vec![
            pod("a", "ns", json!({"app": "web"}), ready()),
            pod("b", "ns", json!({"app": "web"}), crash_looping()),
            pod("c", "ns", json!({"app": "web"}), crash_looping()),
        ];
        let s = compute_with_generated_at(&in_progress_rs(), &candidates, at(1));
        assert_eq!(s.status, Status::Failed);
        assert_eq!(s.message, "2 pods have failed");
        assert_eq!(s.generated.len(), 3);
        let names: Vec<_> = s
            .generated
            .iter()
            .map(|g| g.identity.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(s.generated[1].status, Status::Failed);
        assert_eq!(s.generated[1].reason, "ContainerCrashLooping");
    }

    #[test]
    fn failed_pods_do_not_fail_a_current_controller() {
        let current = rs(
            "web-1",
            "ns",
            json!({}),
            json!({"matchLabels": {"app": "web"}}),
            json!({"replicas": 2, "fullyLabeledReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}),
        );
        let candidates = vec![pod("b", "ns", json!({"app": "web"}), crash_looping())];
        let s = compute_with_generated(&current, &candidates);
        assert_eq!(s.status, Status::Current);
        assert_eq!(s.message, "ReplicaSet is available. Replicas: 2");
        assert_eq!(s.generated.len(), 1);
    }

    #[test]
    fn deleting_and_unschedulable_pods_do_not_count() {
        let mut deleting = pod("d", "ns", json!({"app": "web"}), crash_looping());
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let candidates = vec![
            deleting,
            pod("u", "ns", json!({"app": "web"}), unschedulable()),
        ];
        let s = compute_with_generated_at(&in_progress_rs(), &candidates, at(3600));
        assert_eq!(s.generated[0].status, Status::Terminating);
        assert_eq!(
            s.generated[1].status,
            Status::Failed,
            "unschedulable pod past the window"
        );
        assert_eq!(s.status, Status::InProgress);
        assert_eq!(s.message, "Labelled: 0/2");

        // A pending pod Failed for another reason does count.
        let stalled_pending = pod(
            "p",
            "ns",
            json!({"app": "web"}),
            json!({"phase": "Pending", "conditions": [{"type": "Stalled", "status": "True", "reason": "X"}]}),
        );
        let s = compute_with_generated_at(&in_progress_rs(), &[stalled_pending], at(3600));
        assert_eq!(s.status, Status::Failed);
        assert_eq!(s.message, "1 pods have failed");
    }

    #[test]
    fn counts_as_failure_filters_on_the_pod_object() {
        assert!(counts_as_failure(&pod(
            "a",
            "ns",
            json!({}),
            crash_looping()
        )));
        let mut deleting = pod("d", "ns", json!({}), crash_looping());
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert!(!counts_as_failure(&deleting));
        deleting["metadata"]["deletionTimestamp"] = json!("");
        assert!(counts_as_failure(&deleting));
        assert!(!counts_as_failure(&pod(
            "u",
            "ns",
            json!({}),
            unschedulable()
        )));
        // Malformed conditions: not known to be unschedulable.
        assert!(counts_as_failure(&pod(
            "m",
            "ns",
            json!({}),
            json!({"conditions": 1})
        )));
    }

    #[test]
    fn only_matching_pods_in_the_namespace_are_generated() {
        let candidates = vec![
            pod(
                "other-ns",
                "elsewhere",
                json!({"app": "web"}),
                crash_looping(),
            ),
            pod("other-app", "ns", json!({"app": "db"}), crash_looping()),
            pod("no-labels", "ns", json!(null), crash_looping()),
            rs(
                "not-a-pod",
                "ns",
                json!({"app": "web"}),
                json!({}),
                json!({}),
            ),
            pod("mine", "ns", json!({"app": "web", "x": "y"}), ready()),
        ];
        let s = compute_with_generated(&in_progress_rs(), &candidates);
        assert_eq!(s.status, Status::InProgress);
        assert_eq!(s.generated.len(), 1);
        assert_eq!(s.generated[0].identity.name, "mine");
    }

    #[test]
    fn statefulset_uses_its_pods() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"replicas": 1, "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}},
            "status": {}});
        let s = compute_with_generated(
            &sts,
            &[pod("db-0", "ns", json!({"app": "db"}), crash_looping())],
        );
        assert_eq!(s.status, Status::Failed);
        assert_eq!(s.message, "1 pods have failed");
        // extensions/StatefulSet is not a pod controller (nor has a rule).
        let mut ext = sts.clone();
        ext["apiVersion"] = json!("extensions/v1beta1");
        assert_eq!(compute_with_generated(&ext, &[]).status, Status::Current);
    }

    #[test]
    fn no_selector_is_unknown() {
        let mut o = in_progress_rs();
        o["spec"].as_object_mut().unwrap().remove("selector");
        let s = compute_with_generated(&o, &[]);
        assert_eq!(s.status, Status::Unknown);
        assert_eq!(s.message, "no selector found");
        assert_eq!(s.error.as_deref(), Some("no selector found"));
        let mut o = in_progress_rs();
        o["spec"]["selector"] = json!("app=web");
        let s = compute_with_generated(&o, &[]);
        assert_eq!(s.status, Status::Unknown);
        assert!(
            s.message.starts_with("invalid spec.selector"),
            "{}",
            s.message
        );
        let mut o = in_progress_rs();
        o["spec"] = json!([]);
        assert_eq!(compute_with_generated(&o, &[]).status, Status::Unknown);
    }

    #[test]
    fn empty_selector_selects_all_pods_of_the_namespace() {
        let mut o = in_progress_rs();
        o["spec"]["selector"] = json!({});
        let s = compute_with_generated(&o, &[pod("any", "ns", json!(null), ready())]);
        assert_eq!(s.generated.len(), 1);
    }

    #[test]
    fn controller_compute_error_keeps_generated() {
        let mut o = in_progress_rs();
        o["status"] = json!({"conditions": 3});
        let s = compute_with_generated(&o, &[pod("a", "ns", json!({"app": "web"}), ready())]);
        assert_eq!(s.status, Status::Unknown);
        assert_eq!(s.generated.len(), 1);
    }

    fn deployment(status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}, "status": status})
    }

    #[test]
    fn deployment_attaches_its_replicasets_with_their_pods() {
        let candidates = vec![
            rs(
                "web-2",
                "ns",
                json!({"app": "web", "pod-template-hash": "2"}),
                json!({"matchLabels": {"app": "web", "pod-template-hash": "2"}}),
                json!({}),
            ),
            rs(
                "web-1",
                "ns",
                json!({"app": "web", "pod-template-hash": "1"}),
                json!({"matchLabels": {"app": "web", "pod-template-hash": "1"}}),
                json!({}),
            ),
            rs(
                "db-1",
                "ns",
                json!({"app": "db"}),
                json!({"matchLabels": {"app": "db"}}),
                json!({}),
            ),
            pod(
                "web-2-a",
                "ns",
                json!({"app": "web", "pod-template-hash": "2"}),
                crash_looping(),
            ),
            pod(
                "web-1-a",
                "ns",
                json!({"app": "web", "pod-template-hash": "1"}),
                ready(),
            ),
        ];
        let s = compute_with_generated(&deployment(json!({"replicas": 1})), &candidates);
        // The Deployment's own status is plain compute: no escalation.
        assert_eq!(s.status, Status::InProgress);
        assert_eq!(s.message, "Replicas: 1/2");
        assert_eq!(s.reason, "LessReplicas");
        let names: Vec<_> = s
            .generated
            .iter()
            .map(|g| g.identity.name.as_str())
            .collect();
        assert_eq!(names, ["web-1", "web-2"]);
        assert_eq!(s.generated[0].status, Status::InProgress);
        assert_eq!(s.generated[0].generated.len(), 1);
        assert_eq!(s.generated[0].generated[0].identity.name, "web-1-a");
        assert_eq!(s.generated[1].status, Status::Failed);
        assert_eq!(s.generated[1].message, "1 pods have failed");
    }

    #[test]
    fn deployment_without_selector_is_unknown() {
        let mut d = deployment(json!({}));
        d["spec"].as_object_mut().unwrap().remove("selector");
        let s = compute_with_generated(&d, &[]);
        assert_eq!(s.status, Status::Unknown);
        assert_eq!(s.message, "no selector found");
    }

    #[test]
    fn not_found_and_unknown_constructors() {
        let id = ObjectIdentity::of(&deployment(json!({})));
        let nf = ResourceStatus::not_found(id.clone());
        assert_eq!(nf.status, Status::NotFound);
        assert_eq!(nf.message, "Resource not found");
        let u = ResourceStatus::unknown(id, &Error::NoSelector);
        assert_eq!(u.status, Status::Unknown);
        assert_eq!(u.error.as_deref(), Some("no selector found"));
    }

    #[test]
    fn unschedulable_detection() {
        let candidates = vec![pod("u", "ns", json!({"app": "web"}), unschedulable())];
        // Within the window: the pod is InProgress PodNotScheduled, and so is its controller.
        let s = compute_with_generated_at(&in_progress_rs(), &candidates, at(5));
        assert_eq!(s.generated[0].reason, "PodNotScheduled");
        assert!(s.generated[0].is_unschedulable());
        assert!(s.is_unschedulable());
        // Through a Deployment too.
        let rs_candidates = vec![
            rs(
                "web-1",
                "ns",
                json!({"app": "web"}),
                json!({"matchLabels": {"app": "web"}}),
                json!({}),
            ),
            pod("u", "ns", json!({"app": "web"}), unschedulable()),
        ];
        let d = compute_with_generated_at(&deployment(json!({})), &rs_candidates, at(5));
        assert!(d.is_unschedulable());
        // After the window the pod is Failed: no re-check needed.
        let s = compute_with_generated_at(&in_progress_rs(), &candidates, at(20));
        assert!(!s.is_unschedulable());
        // A ready pod is not.
        let s = compute_with_generated(
            &in_progress_rs(),
            &[pod("r", "ns", json!({"app": "web"}), ready())],
        );
        assert!(!s.is_unschedulable());
    }

    #[test]
    fn resource_status_serializes() {
        let s = ResourceStatus::not_found(ObjectIdentity::of(&deployment(json!({}))));
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"identity": {"group": "apps", "kind": "Deployment", "namespace": "ns", "name": "web"},
                "status": "NotFound", "reason": "", "message": "Resource not found"})
        );
    }
}
