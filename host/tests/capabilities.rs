//! Listener capabilities against the local control plane: the SuperPod example end to end,
//! default-deny policy checked before any request leaves, rate limiting, status patches.

mod common;
mod harness;
mod support;

use std::sync::Arc;
use std::time::Duration;

use harness::{crd_watch, resource, settings, TestHost, Things};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kubelisten::capabilities::policy::Capabilities;
use kubelisten::runtime::{ListenerSpec, Mode};
use serde_json::{json, Value};
use support::Capture;

fn with_caps(mut spec: ListenerSpec, yaml: &str) -> ListenerSpec {
    spec.capabilities = serde_saphyr::from_str::<Capabilities>(yaml).unwrap();
    spec
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The host running the probe listener (classname) with the capabilities `caps` on `t`'s
/// watch, synced, and what the probe logs.
async fn start_probe(t: &Things, caps: &str) -> (TestHost, Arc<Capture>) {
    let probe = with_caps(harness::listener("probe", Mode::Classname), caps);
    let config = t.watch(vec![probe]);
    let capture = Arc::new(Capture::default());
    let (host, _runtime) =
        TestHost::start_serving_cluster(&t.client, &config, &settings(2), capture.clone()).await;
    host.wait_synced().await;
    (host, capture)
}

/// The `probe-result` log line of the probe listener for `object`.
fn probe_result(capture: &Capture, object: &str) -> Option<Value> {
    capture.messages_of("probe").iter().rev().find_map(|m| {
        let v: Value = serde_json::from_str(m.strip_prefix("probe-result ")?).ok()?;
        (v["object"] == object).then_some(v)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn superpod_gets_a_pod_with_an_owner_reference_and_loses_it_on_delete() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let crd = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/crds/superpod-v1.yaml");
    let superpod = with_caps(
        harness::listener("superpod", Mode::Classname),
        "grants:\n  - {apiGroups: [''], resources: [pods], verbs: [get, create, delete]}\n  - {apiGroups: [kubelisten.dev], resources: [superpods/status], verbs: [patch]}\n  - {apiGroups: [events.k8s.io], resources: [events], verbs: [create]}\n",
    );
    let config = crd_watch(&crd, ns.name(), vec![superpod]);
    let capture = Arc::new(Capture::default());
    let runtime = harness::runtime_with_cluster(&client, &config, capture.clone());
    let host = TestHost::start(client.clone(), &runtime, &config, &settings(2)).await;
    host.wait_synced().await;

    let ar = resource("kubelisten.dev", "SuperPod", "superpods");
    let superpods: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    let sp = DynamicObject::new("web", &ar)
        .data(json!({"spec": {"image": "registry.k8s.io/pause:3.10", "replicas": 1}}));
    let sp = superpods.create(&PostParams::default(), &sp).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod = eventually("the pod", async || pods.get_opt("web-pod").await.unwrap()).await;
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SuperPod", "web")
    );
    assert_eq!(Some(&owner.uid), sp.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    let status = eventually("the superpod status", async || {
        let sp = superpods.get("web").await.unwrap();
        sp.data
            .get("status")
            .filter(|s| s["pod"] == "web-pod")
            .cloned()
    })
    .await;
    assert_eq!(status["phase"], "PodCreated");

    superpods
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod to go", async || {
        pods.get_opt("web-pod")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    host.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_outside_the_policy_are_refused_before_reaching_the_server() {
    let t = Things::new().await;
    let other = common::TestNamespace::new(&t.client).await;
    let (host, capture) = start_probe(
        &t,
        "grants:\n  - {apiGroups: [''], resources: [configmaps], verbs: [get]}\n  - {apiGroups: [watch.kubelisten.dev], resources: [things/status], verbs: [patch]}\n  - {apiGroups: [watch.kubelisten.dev], resources: [things], verbs: [get]}\n",
    )
    .await;

    let marker = format!("probe-target-{}", common::random_suffix());
    let calls = json!([
        {"op": "get", "ref": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": other.name(), "name": marker}},
        {"op": "get", "ref": {"apiVersion": "v1", "kind": "Secret", "name": marker}},
        {"op": "create", "body": json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": marker}}).to_string()},
        {"op": "delete", "ref": {"apiVersion": "v1", "kind": "ConfigMap", "name": marker}},
        {"op": "get", "ref": {"apiVersion": "v1", "kind": "ConfigMap", "name": marker}},
        {"op": "patch-status", "body": "{\"status\":{\"probed\":true}}"},
        {"op": "patch", "body": "{\"spec\":{\"probed\":true}}"},
        // Granted `things` get, but the name would reach the status subresource.
        {"op": "get", "ref": {"name": "prober/status"}},
        {"op": "patch-status", "ref": {"name": ".."}, "body": "{}"},
    ]);
    t.create(
        "prober",
        json!({}),
        &[("kubelisten.dev/probe", &calls.to_string())],
    )
    .await;
    let result = eventually("the probe result", async || {
        probe_result(&capture, "prober")
    })
    .await;
    let results = result["results"].as_array().unwrap();
    let kinds: Vec<(u64, Option<&str>)> = results
        .iter()
        .map(|r| {
            (
                r["ok"].as_u64().unwrap(),
                r["errors"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (0, Some("forbidden-by-policy")), // another namespace
            (0, Some("forbidden-by-policy")), // another resource
            (0, Some("forbidden-by-policy")), // a verb not granted
            (0, Some("forbidden-by-policy")),
            (0, Some("not-found")), // granted: reached the API server
            (1, None),              // status subresource granted
            (0, Some("forbidden-by-policy")), // the main resource is not
            (0, Some("invalid")),   // a name with a '/'
            (0, Some("invalid")),   // a name that is ".."
        ],
        "{result}"
    );
    assert!(
        results[0]["message"]
            .as_str()
            .unwrap()
            .contains("configmaps"),
        "the message names the missing grant: {result}"
    );
    assert!(
        results[7]["message"]
            .as_str()
            .unwrap()
            .starts_with("ref.name \"prober/status\""),
        "the message names the field: {result}"
    );

    // Every denial is counted.
    let (_, metrics) = host.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "kubelisten_cluster_calls_denied_total{listener=\"probe\"} 5"),
        "five calls denied by policy:\n{metrics}"
    );

    // The guest carried on (its event succeeded), and only granted calls reached the server.
    let seen = host.stop().await;
    assert!(seen.iter().all(|d| d.report.succeeded()));
    let audited = harness::audit_entries("kubelisten/probe");
    let uris: Vec<&str> = audited
        .iter()
        .filter_map(|e| e["requestURI"].as_str())
        .filter(|u| u.contains(&marker) || u.contains(&format!("{}/things/prober", t.ns.name())))
        .collect();
    assert_eq!(
        uris.len(),
        2,
        "only the granted get and status patch reached the server (not the names with '/' or \"..\"): {uris:?}"
    );
    assert!(
        uris.iter().any(|u| u.starts_with(&format!(
            "/api/v1/namespaces/{}/configmaps/{marker}",
            t.ns.name()
        ))),
        "{uris:?}"
    );
    assert!(
        uris.iter().any(|u| u.contains("/things/prober/status")),
        "{uris:?}"
    );
    let thing = t.api.get("prober").await.unwrap();
    assert_eq!(
        thing.data["status"]["probed"], true,
        "the status patch landed on the status subresource"
    );
    assert!(thing.data["spec"].get("probed").is_none());
    t.ns.delete().await;
    other.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_merge_patches_reach_the_api_server_as_sent() {
    let t = Things::new().await;
    let (host, capture) = start_probe(
        &t,
        "grants:\n  - {apiGroups: [watch.kubelisten.dev], resources: [things, things/status], verbs: [patch]}\n",
    )
    .await;
    let calls = json!([
        {"op": "patch-status", "body": "{\"status\":{\"merged\":true}}"},
        {"op": "json-patch-status", "body": "[{\"op\":\"add\",\"path\":\"/status/jsonPatched\",\"value\":{\"n\":[1,2]}}]"},
        {"op": "json-patch", "body": "[{\"op\":\"add\",\"path\":\"/spec/jsonPatched\",\"value\":\"yes\"}]"},
        // Checked before anything is sent: not a JSON patch, an unknown op.
        {"op": "json-patch", "body": "{\"spec\":{}}"},
        {"op": "json-patch", "body": "[{\"op\":\"frobnicate\",\"path\":\"/spec\"}]"},
        // Sent, and refused by the API server: a test that fails.
        {"op": "json-patch", "body": "[{\"op\":\"test\",\"path\":\"/spec/jsonPatched\",\"value\":\"no\"}]"},
    ]);
    t.create(
        "patched",
        json!({}),
        &[("kubelisten.dev/probe", &calls.to_string())],
    )
    .await;
    let result = eventually("the probe result", async || {
        probe_result(&capture, "patched")
    })
    .await;
    let ok: Vec<u64> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ok"].as_u64().unwrap())
        .collect();
    assert_eq!(ok, [1, 1, 1, 0, 0, 0], "{result}");
    let results = result["results"].as_array().unwrap();
    for (i, expected) in [(3, "not a JSON patch"), (4, "unknown op \"frobnicate\"")] {
        assert!(
            results[i]["errors"].get("invalid").is_some()
                && results[i]["message"].as_str().unwrap().contains(expected),
            "{result}"
        );
    }
    host.stop().await;
    let thing = t.api.get("patched").await.unwrap();
    assert_eq!(thing.data["status"]["merged"], true);
    assert_eq!(thing.data["status"]["jsonPatched"], json!({"n": [1, 2]}));
    assert_eq!(thing.data["spec"]["jsonPatched"], "yes");
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tight_loop_of_calls_is_rate_limited_and_the_host_stays_responsive() {
    let t = Things::new().await;
    let probe = with_caps(
        harness::listener("probe", Mode::Classname),
        "rateLimit: {qps: 4, burst: 2}\ngrants:\n  - {apiGroups: [watch.kubelisten.dev], resources: [things], verbs: [get]}\n",
    );
    let config = t.watch(vec![probe]);
    let capture = Arc::new(Capture::default());
    let runtime = harness::runtime_with_cluster(&t.client, &config, capture.clone());
    let mut host = t.start_host(&runtime, &config, &settings(4)).await;
    let calls = json!([{"op": "get", "repeat": 12}]).to_string();
    t.create("hammer", json!({}), &[("kubelisten.dev/probe", &calls)])
        .await;
    // While the hammer loops, another object's event is handled.
    t.create("bystander", json!({}), &[]).await;
    host.wait_for(Duration::from_secs(60), "both events", |seen| {
        seen.len() >= 2
    })
    .await;
    let seen = host.stop().await;
    let hammer = seen.iter().find(|d| d.event.meta.name == "hammer").unwrap();
    let bystander = seen
        .iter()
        .find(|d| d.event.meta.name == "bystander")
        .unwrap();
    assert!(
        bystander.finished < hammer.finished,
        "the bystander was not held up by the hammering listener"
    );

    let result = probe_result(&capture, "hammer").unwrap();
    assert_eq!(result["results"][0]["ok"], 12, "{result}");
    // The server saw them spread out: never more than burst + qps in any one second.
    let mut times: Vec<chrono_like::Micros> = harness::audit_entries("kubelisten/probe")
        .iter()
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains(&format!("{}/things/hammer", t.ns.name())))
        })
        .map(|e| chrono_like::parse(e["requestReceivedTimestamp"].as_str().unwrap()))
        .collect();
    times.sort_unstable();
    assert_eq!(times.len(), 12);
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < t + 1_000_000)
            .count();
        assert!(in_window <= 2 + 4, "{in_window} requests within one second");
    }
    t.ns.delete().await;
}

/// Just enough RFC 3339 parsing for audit timestamps (`2026-11-21T23:59:01.123456Z`).
mod chrono_like {
    pub type Micros = i64;

    pub fn parse(ts: &str) -> Micros {
        let (date, time) = ts.trim_end_matches('Z').split_once('T').unwrap();
        let day: i64 = date.rsplit('-').next().unwrap().parse().unwrap();
        let mut parts = time.split(':');
        let h: i64 = parts.next().unwrap().parse().unwrap();
        let m: i64 = parts.next().unwrap().parse().unwrap();
        let s: f64 = parts.next().unwrap().parse().unwrap();
        ((day * 24 + h) * 60 + m) * 60_000_000 + (s * 1e6) as i64
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_failures_are_recorded_as_warning_events_rate_limited_per_object() {
    let t = Things::new().await;
    let config = t.watch(vec![harness::listener("faulty", Mode::Classname)]);
    let runtime = harness::runtime_with_cluster(&t.client, &config, Arc::new(Capture::default()));
    let mut host = t.start_host(&runtime, &config, &settings(2)).await;
    let crasher = t
        .create("crasher", json!({}), &[("kubelisten.dev/fault", "panic")])
        .await;
    host.wait_for(Duration::from_secs(60), "three trapped attempts", |seen| {
        seen.len() >= 3
    })
    .await;
    host.stop().await;

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), t.ns.name());
    let recorded = eventually("the Warning event", async || {
        let list = events.list(&Default::default()).await.unwrap();
        let ours: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("crasher"))
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .await;
    assert_eq!(
        recorded.len(),
        1,
        "three traps, one Event (rate-limited per object)"
    );
    let event = &recorded[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("FaultyTrapped"));
    assert!(
        event.note.as_deref().unwrap_or("").contains("panic"),
        "{:?}",
        event.note
    );
    assert!(event.series.is_none(), "published once, not as a series");
    // `kubectl describe thing crasher` shows it: the Event names the object's uid.
    let uid = crasher.metadata.uid.as_deref().unwrap();
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.uid.as_deref()),
        Some(uid)
    );
    let described =
        common::described_events(&t.client, "Thing", Some(t.ns.name()), "crasher", uid).await;
    let reasons: Vec<_> = described.iter().map(|e| e.reason.as_deref()).collect();
    assert_eq!(reasons, [Some("FaultyTrapped")], "{described:?}");
    t.ns.delete().await;
}

/// The host's failure Events about one object: at most one per object and reason within the
/// interval, whatever the message; past it (here a zero interval), the same message again raises
/// the earlier Event's count, and a different message is an Event of its own (not folded into
/// the earlier one, which would keep the stale message).
#[tokio::test(flavor = "multi_thread")]
async fn failure_events_fold_only_repeats_of_the_same_message() {
    use kubelisten::capabilities::events::FailureReporter;
    use kubelisten::runtime::bindings::kubelisten::listener::cluster::ObjectRef;

    let t = Things::new().await;
    let thing = t.create("failing", json!({}), &[]).await;
    let uid = thing.metadata.uid.unwrap();
    let object = ObjectRef {
        api_version: "watch.kubelisten.dev/v1".into(),
        kind: "Thing".into(),
        namespace: Some(t.ns.name().into()),
        name: "failing".into(),
    };
    let unlimited = FailureReporter::new(t.client.clone(), Duration::ZERO);
    for message in [
        "create failed: first",
        "create failed: first",
        "create failed: second",
    ] {
        assert!(
            unlimited
                .report(&object, &uid, "faulty", false, message)
                .await,
            "{message}"
        );
    }
    let limited = FailureReporter::new(t.client.clone(), Duration::from_secs(3600));
    assert!(limited.report(&object, &uid, "other", false, "a").await);
    assert!(
        !limited.report(&object, &uid, "other", false, "b").await,
        "rate-limited per object and reason, whatever the message"
    );

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), t.ns.name());
    // (reason, note, count, name) of the Events about `failing`.
    let recorded = async || {
        let mut found: Vec<(String, String, i32, String)> =
            common::events_regarding(&t.client, t.ns.name(), "failing")
                .await
                .into_iter()
                .map(|e| {
                    (
                        e.reason.unwrap_or_default(),
                        e.note.unwrap_or_default(),
                        e.series.map_or(1, |s| s.count),
                        e.metadata.name.unwrap_or_default(),
                    )
                })
                .collect();
        found.sort();
        found
    };
    let found = recorded().await;
    let summary: Vec<(&str, &str, i32)> = found
        .iter()
        .map(|(reason, note, count, _)| (reason.as_str(), note.as_str(), *count))
        .collect();
    assert_eq!(
        summary,
        [
            ("FaultyFailed", "listener faulty: create failed: first", 2),
            ("FaultyFailed", "listener faulty: create failed: second", 1),
            ("OtherFailed", "listener other: a", 1),
        ]
    );

    // An Event of a series deleted meanwhile: the next repeat is a new Event.
    let first = &found[0].3;
    events.delete(first, &Default::default()).await.unwrap();
    assert!(
        unlimited
            .report(&object, &uid, "faulty", false, "create failed: first")
            .await
    );
    let found = recorded().await;
    let again = found
        .iter()
        .find(|e| e.1 == "listener faulty: create failed: first")
        .unwrap();
    assert_ne!(&again.3, first, "{found:?}");
    assert_eq!(again.2, 1, "{found:?}");
    t.ns.delete().await;
}

/// The Events a probe recorded (reason `Probed`) in `namespace`, by what they regard.
async fn probed_events(
    client: &kube::Client,
    namespace: &str,
    regarding: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    common::events_regarding(client, namespace, regarding)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Probed"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn record_event_about_the_events_own_object_carries_its_uid_for_kubectl_describe() {
    let t = Things::new().await;
    let (host, capture) = start_probe(
        &t,
        "grants:\n  - {apiGroups: [events.k8s.io], resources: [events], verbs: [create]}\n",
    )
    .await;
    // One Event about the event's own object, one about another object (whose uid the host
    // does not know).
    let calls = json!([
        {"op": "event", "body": "about itself"},
        {"op": "event", "ref": {"apiVersion": "v1", "kind": "ConfigMap", "name": "elsewhere"}, "body": "about another"},
    ]);
    let recorder = t
        .create(
            "recorder",
            json!({}),
            &[("kubelisten.dev/probe", &calls.to_string())],
        )
        .await;
    let result = eventually("the probe result", async || {
        probe_result(&capture, "recorder")
    })
    .await;
    assert_eq!(result["results"][0]["ok"], 1, "{result}");
    assert_eq!(result["results"][1]["ok"], 1, "{result}");
    host.stop().await;

    let uid = recorder.metadata.uid.as_deref().unwrap();
    let described =
        common::described_events(&t.client, "Thing", Some(t.ns.name()), "recorder", uid).await;
    let notes: Vec<_> = described.iter().map(|e| e.message.as_deref()).collect();
    assert_eq!(notes, [Some("about itself")], "{described:?}");
    let other = probed_events(&t.client, t.ns.name(), "elsewhere").await;
    assert_eq!(other.len(), 1, "{other:?}");
    let regarding = other[0].regarding.as_ref().unwrap();
    assert_eq!(regarding.namespace.as_deref(), Some(t.ns.name()));
    assert_eq!(
        regarding.uid, None,
        "the uid of another object is not known"
    );
    t.ns.delete().await;
}

/// The host running the probe, allowed to create Events in `default`, on the cluster-scoped
/// object `name` of `group` (`""`: core) v1 `kind`; what the probe reports; and the runtime
/// (kept alive as long as the host).
async fn event_probe_on(
    client: &kube::Client,
    group: &str,
    kind: &str,
    name: &str,
) -> (TestHost, Arc<Capture>, kubelisten::runtime::Runtime) {
    use kubelisten::config::{Config, TargetConfig, WatchConfig};
    let probe = with_caps(
        harness::listener("probe", Mode::Classname),
        "grants:\n  - {apiGroups: [events.k8s.io], resources: [events], verbs: [create], namespaces: [default]}\n",
    );
    let config = Config {
        watches: vec![WatchConfig {
            name: "probed".into(),
            target: TargetConfig::Resource {
                group: group.into(),
                version: "v1".into(),
                kind: kind.into(),
                plural: None,
            },
            namespaces: Vec::new(),
            label_selector: None,
            field_selector: Some(format!("metadata.name={name}")),
            listeners: vec![probe],
        }],
    };
    let capture = Arc::new(Capture::default());
    let (host, runtime) =
        TestHost::start_serving_cluster(client, &config, &settings(2), capture.clone()).await;
    (host, capture, runtime)
}

#[tokio::test(flavor = "multi_thread")]
async fn record_event_about_a_cluster_scoped_object_leaves_its_namespace_empty() {
    use k8s_openapi::api::core::v1::Namespace;

    let client = common::client().await;
    // The watched object is a Namespace: the probe records an Event about it (it runs on
    // `create`, which the initial list delivers).
    let ns = common::TestNamespace::new(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let calls = json!([{"op": "event", "body": "about a namespace"}]).to_string();
    let patch = json!({"metadata": {"annotations": {"kubelisten.dev/probe": calls}}});
    let watched = namespaces
        .patch(
            ns.name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let (host, capture, _runtime) = event_probe_on(&client, "", "Namespace", ns.name()).await;
    let result = eventually("the probe result", async || {
        probe_result(&capture, ns.name())
    })
    .await;
    assert_eq!(result["results"][0]["ok"], 1, "{result}");
    host.stop().await;

    // Written to `default` (the API server's rule for cluster-scoped objects), regarding an
    // object with no namespace.
    let recorded = probed_events(&client, "default", ns.name()).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let regarding = recorded[0].regarding.as_ref().unwrap();
    assert_eq!(regarding.namespace, None, "{regarding:?}");
    // `kubectl describe namespace` lists it (its selector has `involvedObject.namespace=`).
    let uid = watched.metadata.uid.as_deref().unwrap();
    let described = common::described_events(&client, "Namespace", None, ns.name(), uid).await;
    let notes: Vec<_> = described.iter().map(|e| e.message.as_deref()).collect();
    assert_eq!(notes, [Some("about a namespace")], "{described:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let name = recorded[0].metadata.name.clone().unwrap();
    events
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    ns.delete().await;
}

/// An Event about an object whose name is not a valid Event name prefix (a ClusterRole named
/// `kl-test:...`, as `system:` roles are) is recorded: its name is made a DNS subdomain.
#[tokio::test(flavor = "multi_thread")]
async fn record_event_about_an_object_named_with_colons_is_recorded() {
    use k8s_openapi::api::rbac::v1::ClusterRole;

    let client = common::client().await;
    let name = format!("kl-test:probe:{}", common::random_suffix());
    let calls = json!([{"op": "event", "body": "about a role"}]).to_string();
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {
        "name": name, "annotations": {"kubelisten.dev/probe": calls}}}))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let (host, capture, _runtime) =
        event_probe_on(&client, "rbac.authorization.k8s.io", "ClusterRole", &name).await;
    let result = eventually("the probe result", async || probe_result(&capture, &name)).await;
    host.stop().await;
    assert_eq!(result["results"][0]["ok"], 1, "{result}");
    let recorded = probed_events(&client, "default", &name).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let event_name = recorded[0].metadata.name.clone().unwrap();
    assert!(event_name.starts_with("kl-test-probe-"), "{event_name}");
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    events
        .delete(&event_name, &DeleteParams::default())
        .await
        .unwrap();
    roles.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_pages_through_a_list_with_continue_tokens() {
    use k8s_openapi::api::core::v1::ConfigMap;

    let t = Things::new().await;
    let (host, capture) = start_probe(
        &t,
        "grants:\n  - {apiGroups: [''], resources: [configmaps], verbs: [list]}\n",
    )
    .await;

    // Seven labelled ConfigMaps (and one without the label), read three at a time.
    let label = format!("page-{}", common::random_suffix());
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    for i in 0..8 {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("cm-{i}"));
        if i < 7 {
            cm.metadata.labels = Some([("page-test".to_string(), label.clone())].into());
        }
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let calls = json!([
        {"op": "list-all", "ref": {"apiVersion": "v1", "kind": "ConfigMap"}, "limit": 3, "labelSelector": format!("page-test={label}")},
    ]);
    t.create(
        "pager",
        json!({}),
        &[("kubelisten.dev/probe", &calls.to_string())],
    )
    .await;
    let result = eventually("the probe result", async || probe_result(&capture, "pager")).await;
    assert_eq!(
        result["results"][0]["detail"],
        json!({"items": 7, "pages": 3}),
        "{result}"
    );
    host.stop().await;

    // Three list requests reached the API server: the first without a token, two with one.
    let audited = harness::audit_entries("kubelisten/probe");
    let lists: Vec<&str> = audited
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| e["requestURI"].as_str())
        .filter(|u| u.starts_with(&format!("/api/v1/namespaces/{}/configmaps?", t.ns.name())))
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(
        lists.iter().filter(|u| u.contains("continue=")).count(),
        2,
        "{lists:?}"
    );
    t.ns.delete().await;
}
