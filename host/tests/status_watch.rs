//! The status watcher and `kubelisten status` against the local control plane.
//!
//! There is no controller-manager, scheduler or kubelet: every status is written through the
//! status subresource (`Api::patch_status`), and Pods stay Pending.

mod common;
mod harness;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::{json, Value};

use kubelisten::status::watcher::{ScopeStrategy, WatchOptions};
use kubelisten::status::{
    ObjectIdentity, ResourceStatus, Status, StatusStream, StatusWatcher, WatchEvent,
};
use kubelisten::status_cli::{self, StatusArgs};

const WAIT: Duration = Duration::from_secs(30);

fn identity(group: &str, kind: &str, namespace: &str, name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: group.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The next event of the stream (panics after [`WAIT`] or when the stream ends).
async fn next_event(stream: &mut StatusStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the status stream ended"),
        Err(_) => panic!("no status event within {WAIT:?}"),
    }
}

async fn expect_sync(stream: &mut StatusStream) {
    match next_event(stream).await {
        WatchEvent::Sync => {}
        other => panic!("expected Sync, got {other:?}"),
    }
}

/// The next update of `id` whose status, reason or message differs from `previous` (Sync is
/// skipped; an Error panics).
async fn next_change(
    stream: &mut StatusStream,
    id: &ObjectIdentity,
    previous: Option<&ResourceStatus>,
) -> ResourceStatus {
    loop {
        match next_event(stream).await {
            WatchEvent::Sync => continue,
            WatchEvent::Error(err) => panic!("status watch failed: {err:?}"),
            WatchEvent::Update(update) => {
                let status = update.resource;
                assert_eq!(&status.identity, id, "only the watched object is reported");
                let same = previous.is_some_and(|p| {
                    (p.status, &p.reason, &p.message)
                        == (status.status, &status.reason, &status.message)
                });
                if !same {
                    return status;
                }
            }
        }
    }
}

#[track_caller]
fn assert_status(status: &ResourceStatus, expected: Status, reason: &str, message: &str) {
    assert_eq!(
        (
            status.status,
            status.reason.as_str(),
            status.message.as_str()
        ),
        (expected, reason, message),
        "{status:?}"
    );
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/none"}]}
            }
        }
    }))
    .expect("deployment JSON")
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("patching the status of {name}: {e}"));
}

fn custom_api(
    client: &Client,
    group: &str,
    kind: &str,
    plural: &str,
    ns: &str,
) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn delete_crd(client: &Client, name: &str) {
    match Api::<CustomResourceDefinition>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => panic!("deleting CRD {name}: {e}"),
    }
}

#[tokio::test]
async fn deployment_status_changes_are_reported_in_order_then_not_found() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let id = identity("apps", "Deployment", ns.name(), "web");

    let mut stream = StatusWatcher::new(client.clone()).watch([id.clone()]);
    expect_sync(&mut stream).await;

    api.create(&PostParams::default(), &deployment("web", 2))
        .await
        .expect("creating the Deployment");
    let s = next_change(&mut stream, &id, None).await;
    assert_status(&s, Status::InProgress, "LessReplicas", "Replicas: 0/2");
    assert!(
        s.generated.is_empty(),
        "no ReplicaSets without a controller"
    );

    patch_status(
        &api,
        "web",
        json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}),
    )
    .await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::InProgress, "LessReplicas", "Replicas: 1/2");

    patch_status(
        &api,
        "web",
        json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1}),
    )
    .await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::InProgress, "LessAvailable", "Available: 1/2");

    patch_status(
        &api,
        "web",
        json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ok"}
            ]}),
    )
    .await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(
        &s,
        Status::Current,
        "",
        "Deployment is available. Replicas: 2",
    );

    api.delete("web", &DeleteParams::default())
        .await
        .expect("deleting the Deployment");
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::NotFound, "", "Resource not found");
    ns.delete().await;
}

#[tokio::test]
async fn custom_resource_ready_condition_and_observed_generation() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let group = format!("st{}.kubelisten.test", common::random_suffix());
    let (kind, plural) = ("Widget", "widgets");
    common::apply_crd_yaml(&client, &harness::crd_yaml(&group, kind, plural)).await;
    let api = custom_api(&client, &group, kind, plural, ns.name());
    let id = identity(&group, kind, ns.name(), "w");

    // Two namespaces in the set: the automatic scope watches cluster-wide, and the object
    // in the other namespace (never created) is not reported before Sync.
    let other = identity(&group, kind, "elsewhere", "w");
    let mut stream = StatusWatcher::new(client.clone()).watch([id.clone(), other]);
    expect_sync(&mut stream).await;

    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": kind,
        "metadata": {"name": "w"}, "spec": {"size": 1}
    }))
    .expect("widget JSON");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating the Widget");
    let s = next_change(&mut stream, &id, None).await;
    assert_status(&s, Status::Current, "", "Resource is current");

    patch_status(
        &api,
        "w",
        json!({"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "Waiting", "message": "not yet"}]}),
    )
    .await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::InProgress, "Waiting", "not yet");

    patch_status(
        &api,
        "w",
        json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Done", "message": ""}]}),
    )
    .await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::Current, "", "Resource is Ready");

    // A spec change bumps metadata.generation past status.observedGeneration.
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .expect("patching the Widget's spec");
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(
        &s,
        Status::InProgress,
        "LatestGenerationNotObserved",
        "Widget generation is 2, but latest observed generation is 1",
    );

    patch_status(&api, "w", json!({"observedGeneration": 2})).await;
    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(&s, Status::Current, "", "Resource is Ready");

    drop(stream);
    delete_crd(&client, &format!("{plural}.{group}")).await;
    ns.delete().await;
}

#[tokio::test]
async fn kind_without_crd_is_parked_started_when_installed_and_stopped_when_deleted() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let group = format!("late{}.kubelisten.test", common::random_suffix());
    let (kind, plural) = ("Gadget", "gadgets");
    let crd_name = format!("{plural}.{group}");
    let id = identity(&group, kind, ns.name(), "g");
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": kind,
        "metadata": {"name": "g"}, "spec": {}
    }))
    .expect("gadget JSON");

    let mut stream = StatusWatcher::new(client.clone()).watch([id.clone()]);
    // Nothing started (the kind is parked): Sync right away.
    expect_sync(&mut stream).await;

    for round in 1..=2 {
        common::apply_crd_yaml(&client, &harness::crd_yaml(&group, kind, plural)).await;
        let api = custom_api(&client, &group, kind, plural, ns.name());
        // Discovery may lag a moment behind Established.
        let started = Instant::now();
        loop {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => break,
                Err(e) if started.elapsed() < WAIT => {
                    eprintln!("round {round}: creating the Gadget: {e} (retrying)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("creating the Gadget: {e}"),
            }
        }
        let s = next_change(&mut stream, &id, None).await;
        assert_status(&s, Status::Current, "", "Resource is current");

        // Deleting the CRD deletes the Gadget (reported NotFound) and stops the kind's watch.
        delete_crd(&client, &crd_name).await;
        let s = next_change(&mut stream, &id, Some(&s)).await;
        assert_status(&s, Status::NotFound, "", "Resource not found");
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        let started = Instant::now();
        while crds
            .get_opt(&crd_name)
            .await
            .expect("reading the CRD")
            .is_some()
        {
            assert!(started.elapsed() < WAIT, "CRD {crd_name} was not deleted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Round 2 proves the watch was parked again and restarted by the new CRD.
    }
    // No error was reported meanwhile.
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        assert!(!matches!(event, WatchEvent::Error(_)), "{event:?}");
    }
    ns.delete().await;
}

/// A cluster-scoped object whose kind is not served yet is asked for with a namespace (the
/// status command takes an unknown kind for namespaced, and gives it the default namespace):
/// once its CRD is installed, the object of that name is found and reported under the id asked
/// for.
#[tokio::test]
async fn a_cluster_scoped_kind_installed_later_is_matched_by_name() {
    let client = common::client().await;
    let group = format!("latecluster{}.kubelisten.test", common::random_suffix());
    let (kind, plural) = ("Realm", "realms");
    let crd_name = format!("{plural}.{group}");
    let asked = identity(&group, kind, "default", "r");
    let mut stream = StatusWatcher::new(client.clone()).watch([asked.clone()]);
    expect_sync(&mut stream).await;

    let crd =
        harness::crd_yaml(&group, kind, plural).replace("scope: Namespaced", "scope: Cluster");
    common::apply_crd_yaml(&client, &crd).await;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", kind), plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": kind,
        "metadata": {"name": "r"}, "spec": {}
    }))
    .expect("realm JSON");
    let started = Instant::now();
    loop {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => break,
            // Discovery may lag a moment behind Established.
            Err(e) if started.elapsed() < WAIT => {
                eprintln!("creating the Realm: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("creating the Realm: {e}"),
        }
    }
    let s = next_change(&mut stream, &asked, None).await;
    assert_status(&s, Status::Current, "", "Resource is current");
    delete_crd(&client, &crd_name).await;
}

#[tokio::test]
async fn unschedulable_pod_turns_failed_after_the_grace_period_without_a_new_write() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none"}]}
    }))
    .expect("pod JSON");
    api.create(&PostParams::default(), &pod)
        .await
        .expect("creating the Pod");
    patch_status(
        &api,
        "p",
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/0 nodes are available"}]}),
    )
    .await;
    let written = Instant::now();
    let id = identity("", "Pod", ns.name(), "p");

    let mut stream = StatusWatcher::with_options(
        client.clone(),
        WatchOptions {
            scope: ScopeStrategy::Namespace,
            ..WatchOptions::default()
        },
    )
    .watch([id.clone()]);
    let s = next_change(&mut stream, &id, None).await;
    assert_status(
        &s,
        Status::InProgress,
        "PodNotScheduled",
        "Pod has not been scheduled",
    );
    assert!(s.is_unschedulable());

    let s = next_change(&mut stream, &id, Some(&s)).await;
    assert_status(
        &s,
        Status::Failed,
        "PodUnschedulable",
        "Pod could not be scheduled",
    );
    assert!(
        written.elapsed() >= Duration::from_secs(14),
        "turned Failed after {:?}, before the 15 s window",
        written.elapsed()
    );
    ns.delete().await;
}

fn status_args(argv: &[&str]) -> StatusArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }
    let mut full = vec!["status"];
    full.extend_from_slice(argv);
    Cli::try_parse_from(full).expect("status arguments").args
}

fn manifest_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes())
        .expect("writing the manifest");
    file
}

fn web_manifests(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: {ns}}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n\
         spec: {{replicas: 1, selector: {{matchLabels: {{app: web}}}}, template: {{metadata: {{labels: {{app: web}}}}, spec: {{containers: [{{name: c, image: x}}]}}}}}}\n"
    )
}

async fn create_web(client: &Client, ns: &str) -> Api<Deployment> {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}})).expect("cm");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("creating the ConfigMap");
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &deployment("web", 1))
        .await
        .expect("creating the Deployment");
    api
}

const CURRENT_DEPLOYMENT_STATUS: &str = r#"{"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
    "readyReplicas": 1, "availableReplicas": 1, "conditions": [
    {"type": "Available", "status": "True"},
    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}"#;

#[tokio::test]
async fn status_command_exits_0_when_objects_become_current() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let api = create_web(&client, ns.name()).await;
    let file = manifest_file(&web_manifests(ns.name()));
    let path = file.path().to_str().expect("utf-8 temp path");
    let args = status_args(&["-f", path, "-n", ns.name(), "--timeout", "60s"]);

    let out = common::SharedBuffer::default();
    let mut writer = out.clone();
    let mut stdin = std::io::empty();
    let (code, ()) = tokio::join!(
        status_cli::run_live(client.clone(), &args, &mut stdin, &mut writer),
        async {
            // Once the command has reported the Deployment in progress, it becomes available.
            for _ in 0..300 {
                if out.text().contains("LessReplicas: Replicas: 0/1") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            patch_status(
                &api,
                "web",
                serde_json::from_str(CURRENT_DEPLOYMENT_STATUS).unwrap(),
            )
            .await;
        }
    );
    let text = out.text();
    assert_eq!(code.expect("status command"), ExitCode::SUCCESS, "{text}");
    assert!(
        text.contains("LessReplicas: Replicas: 0/1"),
        "the progress is streamed:\n{text}"
    );
    assert!(text.contains("all 2 objects are Current"), "{text}");
    assert!(
        text.contains("Deployment is available. Replicas: 1"),
        "{text}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn status_command_exits_1_on_timeout_and_on_failure_with_the_reason() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    create_web(&client, ns.name()).await;
    let file = manifest_file(&web_manifests(ns.name()));
    let path = file.path().to_str().expect("utf-8 temp path");

    // Timeout, text (the Deployment never becomes available here; 10 s leaves a loaded machine
    // time to list both kinds first).
    let started = Instant::now();
    let (code, text) = status(&client, &["-f", path, "-n", ns.name(), "--timeout", "10s"]).await;
    assert_eq!(code, ExitCode::FAILURE, "{text}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        text.contains("timed out after 10s: 1 of 2 objects are Current"),
        "{text}"
    );
    let web_line = text
        .lines()
        .rev()
        .find(|l| l.contains("/web"))
        .unwrap_or_else(|| panic!("no line for web:\n{text}"));
    assert!(
        web_line.contains("InProgress") && web_line.contains("LessReplicas: Replicas: 0/1"),
        "{text}"
    );

    // Timeout, JSON lines: one result per object, then the summary.
    let args = status_args(&[
        "-f",
        path,
        "-n",
        ns.name(),
        "--timeout",
        "10s",
        "-o",
        "json",
    ]);
    let mut out = Vec::new();
    let code = status_cli::run_live(client.clone(), &args, &mut std::io::empty(), &mut out)
        .await
        .expect("status command");
    assert_eq!(code, ExitCode::FAILURE);
    let lines: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let results: Vec<&Value> = lines.iter().filter(|l| l["event"] == "result").collect();
    assert_eq!(results.len(), 2, "{lines:?}");
    let web = results
        .iter()
        .find(|l| l["name"] == "web")
        .expect("web result");
    assert_eq!(
        (web["status"].as_str(), web["reason"].as_str()),
        (Some("InProgress"), Some("LessReplicas"))
    );
    assert_eq!(lines.last().expect("summary")["outcome"], "timeout");

    // A Failed object (crash-looping Pod) ends the wait at once with exit 1.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "crash"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    .expect("pod JSON");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the Pod");
    patch_status(
        &pods,
        "crash",
        json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "x", "imageID": "",
            "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
    )
    .await;
    let started = Instant::now();
    let (code, text) = status(
        &client,
        &["-k", "pod/crash", "-n", ns.name(), "--timeout", "60s"],
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait for the timeout"
    );
    assert!(text.contains("1 of 1 objects failed"), "{text}");
    assert!(
        text.contains("ContainerCrashLooping: Containers in CrashLoop state: c"),
        "{text}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn status_command_for_deleted_treats_absent_objects_as_not_found() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let (code, text) = status(
        &client,
        &[
            "-k",
            "configmap/absent",
            "-k",
            &format!("Thing.none{}.kubelisten.test/t", common::random_suffix()),
            "-n",
            ns.name(),
            "--for",
            "deleted",
            "--timeout",
            "30s",
        ],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS, "{text}");
    assert!(text.contains("all 2 objects are NotFound"), "{text}");
    ns.delete().await;
}

#[test]
fn status_offline_from_stdin_text_and_json() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns}\n\
                 spec: {replicas: 1}\nstatus: {replicas: 1, updatedReplicas: 1}\n";
    let mut out = Vec::new();
    let code = status_cli::run_offline(
        &status_args(&["--offline", "-f", "-"]),
        &mut input.as_bytes(),
        &mut out,
    )
    .expect("offline status");
    assert_eq!(code, ExitCode::FAILURE, "not Current");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("ns/web")
            && text.contains("InProgress")
            && text.contains("LessAvailable: Available: 0/1"),
        "{text}"
    );

    let mut out = Vec::new();
    status_cli::run_offline(
        &status_args(&["--offline", "-f", "-", "-o", "json"]),
        &mut input.as_bytes(),
        &mut out,
    )
    .expect("offline status");
    let line: Value = serde_json::from_slice(&out).expect("one JSON line");
    assert_eq!(line["status"], "InProgress");
    assert_eq!(line["reason"], "LessAvailable");
    assert_eq!(line["message"], "Available: 0/1");
}

/// Runs the `kubelisten` binary (needs the `status` subcommand wired into main.rs).
fn kubelisten(args: &[&str], stdin: &str) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(args)
        .env("KUBECONFIG", common::kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubelisten");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("kubelisten output")
}

#[test]
fn binary_status_offline() {
    let out = kubelisten(
        &["status", "--offline", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns}\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ns/c") && text.contains("Current"), "{text}");
}

#[tokio::test]
async fn binary_status_exits_0_when_current_and_1_on_timeout() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let api = create_web(&client, ns.name()).await;
    let manifests = web_manifests(ns.name());

    let out = kubelisten(
        &["status", "-f", "-", "-n", ns.name(), "--timeout", "10s"],
        &manifests,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("timed out") && text.contains("LessReplicas: Replicas: 0/1"),
        "{text}"
    );

    patch_status(
        &api,
        "web",
        serde_json::from_str(CURRENT_DEPLOYMENT_STATUS).unwrap(),
    )
    .await;
    let out = kubelisten(
        &["status", "-f", "-", "-n", ns.name(), "--timeout", "30s"],
        &manifests,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("all 2 objects are Current"), "{text}");
    ns.delete().await;
}

/// Runs `kubelisten status ARGV` against the cluster: the exit code and the output.
async fn status(client: &Client, argv: &[&str]) -> (ExitCode, String) {
    let args = status_args(argv);
    let mut out = Vec::new();
    let code = status_cli::run_live(client.clone(), &args, &mut std::io::empty(), &mut out)
        .await
        .expect("status command");
    (code, String::from_utf8(out).expect("utf-8 output"))
}

/// A cluster-scoped object whose manifest carries a namespace (Helm puts the release's on
/// ClusterRoles) is the object without one: found while it exists, and seen deleted.
#[tokio::test]
async fn a_cluster_scoped_manifest_with_a_namespace_is_matched() {
    use k8s_openapi::api::rbac::v1::ClusterRole;

    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let name = format!("kl-status-{}", common::random_suffix());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role: ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("role");
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the ClusterRole");
    let file = manifest_file(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\n  namespace: {}\n",
        ns.name()
    ));
    let path = file.path().to_str().expect("utf-8 temp path");

    let (code, text) = status(&client, &["-f", path, "--timeout", "30s"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{text}");
    assert!(text.contains("all 1 objects are Current"), "{text}");

    // While it exists, --for deleted waits (here: times out); once deleted, it ends.
    let (code, text) = status(
        &client,
        &["-f", path, "--for", "deleted", "--timeout", "2s"],
    )
    .await;
    assert_eq!(
        code,
        ExitCode::FAILURE,
        "an existing ClusterRole is not deleted:\n{text}"
    );
    assert!(text.contains("timed out after 2s"), "{text}");
    roles
        .delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the ClusterRole");
    let (code, text) = status(
        &client,
        &["-f", path, "--for", "deleted", "--timeout", "30s"],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS, "{text}");
    ns.delete().await;
}

/// `-k kind/name` without a group still resolves while an aggregated API is down (an
/// APIService whose Service does not exist answers 503 to discovery), as kubectl does.
#[tokio::test]
async fn a_kind_is_found_while_an_aggregated_api_is_down() {
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;

    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}})).expect("cm");
    Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &cm)
        .await
        .expect("creating the ConfigMap");
    let group = format!("down-{}.kubelisten.dev", common::random_suffix());
    let services: Api<APIService> = Api::all(client.clone());
    let service: APIService = serde_json::from_value(json!({
        "metadata": {"name": format!("v1.{group}")},
        "spec": {"group": group, "version": "v1", "groupPriorityMinimum": 1000,
                 "versionPriority": 15, "insecureSkipTLSVerify": true,
                 "service": {"namespace": ns.name(), "name": "nothing", "port": 443}}
    }))
    .expect("APIService");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("creating the APIService");
    // Run before any assertion, so that the APIService is deleted whatever happens (it would
    // hold up every namespace deletion of the cluster). First, until the API server has found
    // the aggregated API down (its Available condition False), so the command meets it down.
    // (Asking the API itself that early can hang for minutes in the API server's proxy.)
    let mut seen_down = false;
    for _ in 0..300 {
        let down = services
            .get_status(&format!("v1.{group}"))
            .await
            .ok()
            .and_then(|s| s.status)
            .and_then(|s| s.conditions)
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "False")
            });
        if down {
            seen_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !seen_down {
        let _ = services
            .delete(&format!("v1.{group}"), &DeleteParams::default())
            .await;
        panic!("the API server never found the aggregated API down (Available=False)");
    }
    let args = status_args(&["-k", "configmap/cfg", "-n", ns.name(), "--timeout", "30s"]);
    let mut out = Vec::new();
    let code = status_cli::run_live(client.clone(), &args, &mut std::io::empty(), &mut out).await;
    let _ = services
        .delete(&format!("v1.{group}"), &DeleteParams::default())
        .await;
    let text = String::from_utf8(out).expect("utf-8 output");
    assert_eq!(code.expect("status command"), ExitCode::SUCCESS, "{text}");
    assert!(text.contains("all 1 objects are Current"), "{text}");
    ns.delete().await;
}
