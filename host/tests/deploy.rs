//! `deploy/` (the kustomize manifests) against the local control plane:
//!
//! 1. `kubectl apply --dry-run=server -k deploy/` (and the example overlay) is accepted, and the
//!    Deployment's Pod template passes Pod Security `restricted` admission in kubelisten's
//!    namespace, while weakened copies of it are rejected (so the check is real).
//! 2. With the manifests applied for real, the kubelisten binary runs with nothing but a token
//!    of its ServiceAccount (minted with the TokenRequest API, handed over the way in-cluster
//!    configuration would: token + CA + API server address) and the SuperPod scenario works:
//!    watch, dispatch, capability calls (Pod create/delete, status patch, Event), and, where the
//!    binary has them, the health endpoints, leader election and the modules ConfigMap with
//!    hot-swap.
//! 3. Least privilege the other way round: as the ServiceAccount, SelfSubjectAccessReviews of what
//!    kubelisten needs are allowed and of a sample of what it does not need are denied.
//!
//! Needs `make guests` (the modules are packaged from target/guests by deploy/sync-modules.sh,
//! which these tests run) and `kubectl` on PATH. Each test installs the manifests under its own
//! namespace and name prefix (a kustomize overlay in a temporary directory), so tests run in
//! parallel and leave the shipped `kubelisten-system` objects alone, except the Namespace and
//! ServiceAccount test 1 needs for the dry run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

// --- paths and kubectl -------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// Runs deploy/sync-modules.sh (once per test binary; tests share the copies).
fn sync_modules() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let out = Command::new(deploy_dir().join("sync-modules.sh"))
        .output()
        .expect("running deploy/sync-modules.sh");
    assert!(
        out.status.success(),
        "deploy/sync-modules.sh failed (run `make guests` first):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    *done = true;
}

/// `kubectl ARGS` as the cluster admin, with `stdin` if given.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", common::kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("running kubectl (is it installed and on PATH?)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().expect("waiting for kubectl")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> Output {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        text(&out)
    );
    out
}

/// `kubectl kustomize DIR`, as JSON objects.
fn build(dir: &Path) -> Vec<Value> {
    let out = kubectl_ok(&["kustomize", dir.to_str().unwrap()], None);
    let yaml = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap_or_else(|e| panic!("parsing kustomize output of {}: {e}", dir.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn list(items: impl IntoIterator<Item = Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items.into_iter().collect::<Vec<_>>()})
        .to_string()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in the build");
    found[0]
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap()
}

// --- 1. dry run and Pod Security --------------------------------------------------------

/// A Pod made of the Deployment's Pod template, in the Deployment's namespace.
fn pod_from_template(deployment: &Value, name: &str) -> Value {
    let template = &deployment["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
        },
        "spec": template["spec"],
    })
}

/// Server-side dry-run create of `pod`.
fn dry_run_pod(pod: &Value) -> Output {
    kubectl(
        &["create", "--dry-run=server", "-o", "name", "-f", "-"],
        Some(&pod.to_string()),
    )
}

#[test]
fn manifests_pass_server_dry_run_and_pod_security_restricted() {
    sync_modules();
    let objects = build(&deploy_dir());
    let namespace = find(&objects, "Namespace");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(
        labels["pod-security.kubernetes.io/enforce"], "restricted",
        "{namespace}"
    );
    let deployment = find(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let ns = name_of(namespace).to_string();
    assert_eq!(deployment["metadata"]["namespace"], ns.as_str());

    // A server-side dry run cannot create the namespace its objects go into, and Pods need
    // their ServiceAccount to exist: create both for real (idempotent, harmless).
    let sa = find(&objects, "ServiceAccount");
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&list([namespace.clone(), sa.clone()])),
    );

    for extra in [&[][..], &["--server-side", "--force-conflicts"][..]] {
        let mut args = vec!["apply", "--dry-run=server"];
        args.extend_from_slice(extra);
        let deploy = deploy_dir();
        args.extend(["-k", deploy.to_str().unwrap()]);
        let out = kubectl_ok(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Pod Security warns about workload templates that would be rejected.
        assert!(
            !stderr.contains("would violate PodSecurity"),
            "the Deployment's template violates Pod Security: {}",
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "deployment.apps/kubelisten",
            "poddisruptionbudget.policy/kubelisten",
            "configmap/kubelisten-modules",
            "customresourcedefinition.apiextensions.k8s.io/superpods.kubelisten.dev",
        ] {
            assert!(stdout.contains(kind), "{kind} missing: {}", text(&out));
        }
    }

    // The Pod the Deployment would make is admitted in the restricted namespace...
    let pod = pod_from_template(deployment, "kubelisten-pod-security-check");
    let out = dry_run_pod(&pod);
    assert!(
        out.status.success(),
        "the Deployment's Pod is not admitted: {}",
        text(&out)
    );

    // ...and weakened copies are not: the namespace really enforces `restricted`.
    type Weaken = fn(&mut Value);
    let weakened: [(&str, Weaken); 6] = [
        ("privileged", |p| {
            // (privileged with allowPrivilegeEscalation false is invalid before admission)
            let sc = &mut p["spec"]["containers"][0]["securityContext"];
            sc["privileged"] = json!(true);
            sc["allowPrivilegeEscalation"] = json!(true);
        }),
        ("runAsNonRoot removed", |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("runAsNonRoot");
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("runAsNonRoot");
        }),
        ("allowPrivilegeEscalation", |p| {
            p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true)
        }),
        ("capabilities not dropped", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                json!({"add": ["NET_ADMIN"]})
        }),
        ("seccomp removed", |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("seccompProfile");
        }),
        ("hostNetwork", |p| p["spec"]["hostNetwork"] = json!(true)),
    ];
    for (what, weaken) in weakened {
        let mut bad = pod.clone();
        weaken(&mut bad);
        let out = dry_run_pod(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("violates PodSecurity \"restricted"),
            "a Pod with {what} was not rejected by Pod Security: {}",
            text(&out)
        );
    }
    // The same for the workload template: a weakened Deployment draws the warning.
    let mut bad = deployment.clone();
    let sc = &mut bad["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    sc["privileged"] = json!(true);
    sc["allowPrivilegeEscalation"] = json!(true);
    let out = kubectl_ok(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&bad.to_string()),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would violate PodSecurity"),
        "no Pod Security warning for a privileged template: {}",
        text(&out)
    );
}

#[test]
fn example_overlay_passes_server_dry_run() {
    sync_modules();
    let dir = deploy_dir().join("overlays/example");
    let objects = build(&dir);
    let namespace = find(&objects, "Namespace");
    assert_eq!(name_of(namespace), "platform-listeners");
    let deployment = find(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/kubelisten:0.1.0"
    );
    // Every binding's ServiceAccount subject moved to the overlay's namespace.
    for binding in objects
        .iter()
        .filter(|o| o["kind"].as_str().unwrap().ends_with("Binding"))
    {
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(subject["namespace"], "platform-listeners", "{binding}");
        }
    }
    let sa = find(&objects, "ServiceAccount");
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&list([namespace.clone(), sa.clone()])),
    );
    let out = kubectl_ok(
        &["apply", "--dry-run=server", "-k", dir.to_str().unwrap()],
        None,
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("would violate PodSecurity"),
        "{}",
        text(&out)
    );
    let out = dry_run_pod(&pod_from_template(
        deployment,
        "kubelisten-pod-security-check",
    ));
    assert!(out.status.success(), "{}", text(&out));
}

/// Bytes of a Kubernetes memory quantity such as `512Mi` (the binary suffixes and plain bytes).
fn quantity_bytes(q: &str) -> u64 {
    for (suffix, factor) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"))
}

/// The rule of deploy/README.md ("Size the memory limit"), for the base install and the
/// example overlay: about 40 MiB for the host, plus per watch (workers + 1) x its classname
/// listeners' memory (workers without prewarm) and its reference listeners' memory once, plus
/// one compile's data limit, must fit in the container's memory limit; else a guest growing to
/// its own limit gets the whole container OOM-killed instead of trapping.
#[test]
fn the_memory_limit_holds_what_the_listeners_and_a_compile_may_take() {
    sync_modules();
    for dir in [deploy_dir(), deploy_dir().join("overlays/example")] {
        let objects = build(&dir);
        let deployment = find(&objects, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let env = |name: &str| {
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
                .map(|v| v.parse::<u64>().unwrap())
        };
        let workers = env("KUBELISTEN_WORKERS").unwrap_or(8);
        let compile = env("KUBELISTEN_COMPILE_MEMORY_MIB").unwrap_or(2048) << 20;
        let limit = quantity_bytes(
            container["resources"]["limits"]["memory"]
                .as_str()
                .expect("a memory limit"),
        );
        let listeners_yaml = objects
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .find_map(|o| o["data"]["listeners.yaml"].as_str())
            .expect("the modules ConfigMap's listeners.yaml");
        let listeners: Value = serde_saphyr::from_str(listeners_yaml).unwrap();
        let mut instances = 0;
        for watch in listeners["watches"].as_array().unwrap() {
            for listener in watch["listeners"].as_array().unwrap() {
                let limits = &listener["limits"];
                let memory = limits["memory-bytes"].as_u64().unwrap_or(64 << 20);
                instances += match listener["mode"].as_str().unwrap_or("classname") {
                    "reference" => memory,
                    _ if limits["prewarm"] == false => workers * memory,
                    _ => (workers + 1) * memory,
                };
            }
        }
        let needed = (40 << 20) + instances + compile;
        assert!(
            needed <= limit,
            "{}: {} MiB needed (40 host + {} instances + {} compile) > {} MiB limit",
            dir.display(),
            needed >> 20,
            instances >> 20,
            compile >> 20,
            limit >> 20
        );
    }
}

// --- 2 and 3: installed for real, run as the ServiceAccount ----------------------------

/// The manifests installed for real under a unique namespace and name prefix, watching
/// SuperPods in one workload namespace.
struct Installed {
    dir: tempfile::TempDir,
    /// kubelisten's namespace (restricted); also the name prefix of every object.
    ns: String,
    /// Where the test's SuperPods live.
    workload: common::TestNamespace,
    objects: Vec<Value>,
}

impl Installed {
    async fn new(client: &kube::Client) -> Self {
        sync_modules();
        let workload = common::TestNamespace::with_prefix(client, "kl-deploy-work").await;
        let ns = format!("kl-deploy-{}", common::random_suffix());
        let dir = tempfile::tempdir().unwrap();
        let rel = relative(&deploy_dir(), dir.path());
        let listeners = std::fs::read_to_string(deploy_dir().join("listeners.yaml")).unwrap();
        let anchor = "    kind: SuperPod\n";
        assert!(listeners.contains(anchor), "deploy/listeners.yaml changed");
        let listeners = listeners.replacen(
            anchor,
            &format!("{anchor}    namespaces: [{}]\n", workload.name()),
            1,
        );
        std::fs::write(dir.path().join("listeners.yaml"), listeners).unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {rel}
namespace: {ns}
namePrefix: {ns}-
transformers:
  - |-
    apiVersion: builtin
    kind: NamespaceTransformer
    metadata:
      name: namespace
      namespace: {ns}
    setRoleBindingSubjects: allServiceAccounts
    unsetOnly: false
configMapGenerator:
  - name: kubelisten-modules
    behavior: merge
    files: [listeners.yaml]
    options:
      disableNameSuffixHash: true
"#
            ),
        )
        .unwrap();
        let objects = build(dir.path());
        // The CRD first (established before anything uses it), then everything else.
        let (crds, rest): (Vec<Value>, Vec<Value>) = objects
            .iter()
            .cloned()
            .partition(|o| o["kind"] == "CustomResourceDefinition");
        for crd in &crds {
            kubectl_ok(
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                Some(&crd.to_string()),
            );
            let name = format!("crd/{}", name_of(crd));
            kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    &name,
                ],
                None,
            );
        }
        kubectl_ok(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&list(rest)),
        );
        let installed = Self {
            dir,
            ns,
            workload,
            objects,
        };
        installed.wait_for_bindings(client).await;
        installed
    }

    /// Waits (up to 30 s each) until every binding applied is in force for the ServiceAccount:
    /// the API server's authorizer reads Roles and bindings through informers, so a request
    /// made just after the apply may still be refused.
    async fn wait_for_bindings(&self, client: &kube::Client) {
        let user = format!(
            "system:serviceaccount:{}:{}",
            self.ns,
            self.service_account()
        );
        let reviews = Api::<SubjectAccessReview>::all(client.clone());
        let first = |v: &Value| v.get(0).and_then(Value::as_str).map(str::to_string);
        for binding in self
            .objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            let role_ref = &binding["roleRef"];
            let Some(role) = self.objects.iter().find(|o| {
                o["kind"] == role_ref["kind"] && o["metadata"]["name"] == role_ref["name"]
            }) else {
                continue; // A role of the cluster's own (none here today).
            };
            let rule = &role["rules"][0];
            let resource = first(&rule["resources"]).unwrap_or_default();
            let (resource, subresource) = match resource.split_once('/') {
                Some((r, s)) => (r.to_string(), Some(s.to_string())),
                None => (resource, None),
            };
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: first(&rule["verbs"]),
                        group: first(&rule["apiGroups"]),
                        resource: Some(resource),
                        subresource,
                        name: first(&rule["resourceNames"]),
                        namespace: binding["metadata"]["namespace"]
                            .as_str()
                            .map(str::to_string),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .unwrap();
                if answer.status.is_some_and(|s| s.allowed) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "binding {} is not in force for {user}: {:?}",
                    binding["metadata"]["name"],
                    review.spec.resource_attributes
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn prefixed(&self, name: &str) -> String {
        format!("{}-{name}", self.ns)
    }

    fn service_account(&self) -> String {
        self.prefixed("kubelisten")
    }

    fn modules_configmap(&self) -> String {
        self.prefixed("kubelisten-modules")
    }

    /// A kubeconfig with nothing but the ServiceAccount's token, the cluster CA and the API
    /// server address: what in-cluster configuration reads from
    /// /var/run/secrets/kubernetes.io/serviceaccount and KUBERNETES_SERVICE_HOST/PORT.
    async fn service_account_kubeconfig(&self, client: &kube::Client) -> PathBuf {
        let token = common::mint_token(client, &self.ns, &self.service_account(), &[], 3600).await;
        let sa_dir = self.dir.path().join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).unwrap();
        std::fs::write(sa_dir.join("token"), &token).unwrap();
        std::fs::write(sa_dir.join("namespace"), &self.ns).unwrap();
        let path = self.dir.path().join("kubeconfig");
        common::user_kubeconfig(
            &path,
            json!({ "tokenFile": sa_dir.join("token") }),
            Some(&self.ns),
        );
        path
    }

    /// The modules ConfigMap's listeners.yaml and modules written to a directory, for
    /// `--config` (when the binary cannot read the ConfigMap itself).
    fn unpack_modules(&self) -> PathBuf {
        let cm = self
            .objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && name_of(o) == self.modules_configmap())
            .expect("the modules ConfigMap");
        // kustomize wraps long base64 lines; the API server ignores the line breaks.
        let mut cm = cm.clone();
        if let Some(binary) = cm["binaryData"].as_object_mut() {
            for value in binary.values_mut() {
                let joined: String = value.as_str().unwrap().split_whitespace().collect();
                *value = json!(joined);
            }
        }
        let cm: ConfigMap = serde_json::from_value(cm).unwrap();
        let dir = self.dir.path().join("modules");
        std::fs::create_dir_all(&dir).unwrap();
        for (key, value) in cm.data.unwrap_or_default() {
            std::fs::write(dir.join(key), value).unwrap();
        }
        for (key, value) in cm.binary_data.unwrap_or_default() {
            std::fs::write(dir.join(key), value.0).unwrap();
        }
        dir.join("listeners.yaml")
    }

    async fn delete(self, client: &kube::Client) {
        let cluster_scoped: Vec<Value> = self
            .objects
            .iter()
            .filter(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some("ClusterRole" | "ClusterRoleBinding")
                )
            })
            .cloned()
            .collect();
        kubectl(
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&list(cluster_scoped)),
        );
        kubectl(
            &[
                "delete",
                "namespace",
                &self.ns,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        let _ = client;
        self.workload.delete().await;
    }
}

fn relative(target: &Path, from: &Path) -> String {
    let target: Vec<_> = target.components().collect();
    let from = from.canonicalize().unwrap();
    let from: Vec<_> = from.components().collect();
    let common = target.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &target[common..] {
        rel.push(c);
    }
    rel.to_str().unwrap().to_string()
}

/// A client acting as the ServiceAccount.
async fn client_from(kubeconfig: &Path) -> kube::Client {
    common::install_crypto_provider();
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// What `kubelisten run --help` offers (flags being added land at different times).
fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plain HTTP/1.1 GET on 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The kubelisten binary, run as a Pod of the Deployment would run it.
struct Kubelisten {
    child: Child,
    log: PathBuf,
}

impl Kubelisten {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    #[track_caller]
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kubelisten exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Stops it with SIGTERM (graceful shutdown), KILL after 30 s.
    fn stop(mut self) -> String {
        let pid = self.child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Kubelisten {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the scenario could check with this binary.
#[derive(Debug, Default)]
struct Features {
    health: Option<u16>,
    /// The port of the status listener (`--status-bind`, whose default is loopback too: only
    /// the port is chosen, so that tests running at once do not collide).
    status: Option<u16>,
    leader_election: bool,
    modules_configmap: bool,
}

async fn eventually<T>(
    what: &str,
    kubelisten: &mut Kubelisten,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        kubelisten.assert_running();
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out waiting for {what}; kubelisten's log:\n{}",
        kubelisten.log()
    );
}

/// Start the binary with the ServiceAccount's kubeconfig and the Deployment's settings.
fn start_kubelisten(installed: &Installed, kubeconfig: &Path, features: &Features) -> Kubelisten {
    let home = installed.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = installed.dir.path().join("kubelisten.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubelisten"));
    cmd.arg("run");
    // Only what the Pod would have: no admin kubeconfig, no ~/.kube, no KUBELISTEN_* settings
    // from the caller's environment.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("KUBELISTEN_") || key.starts_with("KUBERNETES_") || key == "KUBECONFIG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", &home)
        .env("HOSTNAME", "kubelisten-0")
        .env("POD_NAME", "kubelisten-0")
        .env("POD_NAMESPACE", &installed.ns)
        .env("RUST_LOG", "info,cranelift=warn,wasmtime=warn")
        .env("NO_COLOR", "1")
        .env("KUBELISTEN_CACHE_DIR", installed.dir.path().join("cache"));
    if features.modules_configmap {
        cmd.args([
            "--modules-configmap",
            &format!("{}/{}", installed.ns, installed.modules_configmap()),
        ]);
    } else {
        cmd.arg("--config").arg(installed.unpack_modules());
    }
    if let Some(port) = features.health {
        cmd.args(["--health-port", &port.to_string()]);
    }
    if let Some(port) = features.status {
        cmd.args(["--status-bind", &format!("127.0.0.1:{port}")]);
    }
    if features.leader_election {
        cmd.args([
            "--leader-election-namespace",
            &installed.ns,
            "--leader-election-name",
            "kubelisten",
        ]);
    }
    let child = cmd
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Kubelisten { child, log }
}

/// Creates SuperPod `name` and waits for the listener's work: the Pod, the status, the Event
/// reported by `kubelisten/<listener>`.
async fn superpod_flow(
    client: &kube::Client,
    workload: &str,
    name: &str,
    listener: &str,
    kubelisten: &mut Kubelisten,
) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubelisten.dev", "v1", "SuperPod"),
        "superpods",
    );
    let superpods: Api<DynamicObject> = Api::namespaced_with(client.clone(), workload, &ar);
    let sp = DynamicObject::new(name, &ar)
        .data(json!({"spec": {"image": "registry.k8s.io/pause:3.10", "replicas": 1}}));
    superpods.create(&PostParams::default(), &sp).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), workload);
    let pod_name = format!("{name}-pod");
    let pod = eventually("the SuperPod's Pod", kubelisten, async || {
        pods.get_opt(&pod_name).await.unwrap()
    })
    .await;
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SuperPod", name)
    );
    eventually("the SuperPod's status", kubelisten, async || {
        let sp = superpods.get(name).await.unwrap();
        (sp.data["status"]["pod"] == pod_name.as_str()).then_some(())
    })
    .await;
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), workload);
    let controller = format!("kubelisten/{listener}");
    eventually("the SuperPod's Event", kubelisten, async || {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some("PodCreated")
                    && e.reporting_controller.as_deref() == Some(controller.as_str())
            })
            .map(|_| ())
    })
    .await;
    superpods
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Pod's deletion", kubelisten, async || {
        pods.get_opt(&pod_name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_with_nothing_but_its_service_account_token() {
    let client = common::client().await;
    let installed = Installed::new(&client).await;
    let kubeconfig = installed.service_account_kubeconfig(&client).await;

    let help = run_help();
    let features = Features {
        health: help.contains("--health-port").then(common::free_port),
        status: help.contains("--status-bind").then(common::free_port),
        leader_election: help.contains("--leader-election-namespace"),
        modules_configmap: help.contains("--modules-configmap"),
    };
    let missing: Vec<&str> = [
        (
            "health endpoints (--health-port)",
            features.health.is_some(),
        ),
        (
            "/status on its own listener (--status-bind)",
            features.status.is_some(),
        ),
        (
            "leader election (--leader-election-namespace)",
            features.leader_election,
        ),
        (
            "modules ConfigMap + hot-swap (--modules-configmap)",
            features.modules_configmap,
        ),
    ]
    .into_iter()
    .filter(|(_, has)| !has)
    .map(|(what, _)| what)
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "NOT CHECKED (this kubelisten binary lacks them): {}",
            missing.join(", ")
        );
    }

    let mut kubelisten = start_kubelisten(&installed, &kubeconfig, &features);

    if let Some(port) = features.health {
        eventually("/healthz", &mut kubelisten, async || {
            matches!(http_get(port, "/healthz"), Ok((200, _))).then_some(())
        })
        .await;
    }
    if features.leader_election {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &installed.ns);
        let holder = eventually("the Lease", &mut kubelisten, async || {
            leases
                .get_opt("kubelisten")
                .await
                .unwrap()
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty())
        })
        .await;
        // The identity defaults to HOSTNAME, the Pod's name in a cluster, with a random suffix
        // of the process.
        assert!(holder.starts_with("kubelisten-0_"), "{holder}");
    }
    if let Some(port) = features.health {
        eventually("/readyz", &mut kubelisten, async || {
            matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(())
        })
        .await;
    }

    // Watch, dispatch and the listener's capability calls, as the ServiceAccount.
    superpod_flow(
        &client,
        installed.workload.name(),
        "web",
        "superpod",
        &mut kubelisten,
    )
    .await;

    if let Some(port) = features.health {
        let (status, metrics) = http_get(port, "/metrics").unwrap();
        assert_eq!(status, 200, "/metrics: {metrics}");
        assert!(!metrics.trim().is_empty(), "/metrics is empty");
    }
    // /status names every watched object: not on the probe port, which the pod network
    // reaches, but on its own listener (loopback by default).
    let status_port = features.status.or(features.health);
    if let (Some(health), Some(_)) = (features.health, features.status) {
        let (status, body) = http_get(health, "/status").unwrap();
        assert_eq!(status, 404, "/status on the probe port: {body}");
    }
    if let Some(port) = status_port {
        let (status, body) = http_get(port, "/status").unwrap();
        assert_eq!(status, 200, "/status: {body}");
        assert!(body.contains("\"superpod\""), "/status: {body}");
    }

    if features.modules_configmap {
        // Hot-swap: rename the listener in the ConfigMap; the next SuperPod's Event is
        // reported by the new name, without a restart.
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &installed.ns);
        let cm = configmaps
            .get(&installed.modules_configmap())
            .await
            .unwrap();
        let listeners = cm.data.unwrap()["listeners.yaml"].clone();
        let swapped = listeners.replacen("- name: superpod\n", "- name: superpod-v2\n", 1);
        assert_ne!(
            swapped, listeners,
            "listeners.yaml has no `- name: superpod`"
        );
        let patch = json!({"data": {"listeners.yaml": swapped}});
        configmaps
            .patch(
                &installed.modules_configmap(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
        // The swap is applied once /status shows the new listener.
        if let Some(port) = status_port {
            let mut swapped = false;
            for _ in 0..300 {
                if http_get(port, "/status").is_ok_and(|(_, body)| body.contains("\"superpod-v2\""))
                {
                    swapped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(swapped, "the renamed listener never showed in /status");
        }
        let pid = kubelisten.child.id();
        superpod_flow(
            &client,
            installed.workload.name(),
            "web2",
            "superpod-v2",
            &mut kubelisten,
        )
        .await;
        assert_eq!(kubelisten.child.id(), pid);
    }

    let log = kubelisten.stop();
    // Nothing it tried was refused by RBAC (each refusal names the ServiceAccount).
    let user = format!("system:serviceaccount:{}:", installed.ns);
    let refused: Vec<&str> = log.lines().filter(|l| l.contains(&user)).collect();
    assert!(
        refused.is_empty(),
        "kubelisten was refused something it needs:\n{}\n\nfull log:\n{log}",
        refused.join("\n")
    );
    installed.delete(&client).await;
}

/// (verb, group, resource, subresource, namespace, name)
type Access<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

async fn allowed(client: &kube::Client, access: Access<'_>) -> bool {
    let (verb, group, resource, subresource, namespace, name) = access;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: some(verb),
                group: Some(group.to_string()),
                resource: some(resource),
                subresource: some(subresource),
                namespace: some(namespace),
                name: some(name),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_gets_what_kubelisten_needs_and_nothing_more() {
    let client = common::client().await;
    let installed = Installed::new(&client).await;
    let kubeconfig = installed.service_account_kubeconfig(&client).await;
    let me = client_from(&kubeconfig).await;
    let ns = installed.ns.as_str();
    let work = installed.workload.name();
    let modules = installed.modules_configmap();
    let modules = modules.as_str();

    let needed: Vec<Access> = vec![
        ("list", "kubelisten.dev", "superpods", "", "", ""),
        ("watch", "kubelisten.dev", "superpods", "", "", ""),
        ("get", "kubelisten.dev", "superpods", "", work, "web"),
        (
            "patch",
            "kubelisten.dev",
            "superpods",
            "status",
            work,
            "web",
        ),
        ("get", "", "pods", "", work, "web-pod"),
        ("create", "", "pods", "", work, ""),
        ("delete", "", "pods", "", work, "web-pod"),
        ("create", "events.k8s.io", "events", "", work, ""),
        ("patch", "events.k8s.io", "events", "", work, "x"),
        ("create", "coordination.k8s.io", "leases", "", ns, ""),
        ("get", "coordination.k8s.io", "leases", "", ns, "kubelisten"),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            "",
            ns,
            "kubelisten",
        ),
        ("get", "", "configmaps", "", ns, modules),
        ("list", "", "configmaps", "", ns, modules),
        ("watch", "", "configmaps", "", ns, modules),
    ];
    let not_needed: Vec<Access> = vec![
        ("get", "", "secrets", "", ns, ""),
        ("list", "", "secrets", "", "", ""),
        ("get", "", "secrets", "", work, "any"),
        ("create", "", "pods", "exec", work, "web-pod"),
        ("create", "", "pods", "attach", work, "web-pod"),
        ("update", "", "pods", "", work, "web-pod"),
        ("patch", "", "pods", "", work, "web-pod"),
        ("list", "", "pods", "", "", ""),
        ("delete", "apps", "deployments", "", work, "x"),
        ("delete", "apps", "deployments", "", ns, "kubelisten"),
        ("create", "apps", "deployments", "", ns, ""),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "",
            "",
        ),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "",
            "cluster-admin",
        ),
        ("escalate", "rbac.authorization.k8s.io", "roles", "", ns, ""),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "",
            ns,
            "",
        ),
        ("delete", "", "configmaps", "", work, "x"),
        ("delete", "", "configmaps", "", ns, modules),
        ("update", "", "configmaps", "", ns, modules),
        ("get", "", "configmaps", "", ns, "another"),
        ("list", "", "configmaps", "", ns, ""),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            "",
            ns,
            "someone-else",
        ),
        (
            "delete",
            "coordination.k8s.io",
            "leases",
            "",
            ns,
            "kubelisten",
        ),
        (
            "get",
            "coordination.k8s.io",
            "leases",
            "",
            "kube-system",
            "kube-controller-manager",
        ),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "",
            "",
        ),
        (
            "delete",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "",
            "superpods.kubelisten.dev",
        ),
        ("create", "kubelisten.dev", "superpods", "", work, ""),
        ("delete", "kubelisten.dev", "superpods", "", work, "web"),
        ("update", "kubelisten.dev", "superpods", "", work, "web"),
        ("create", "", "serviceaccounts", "token", ns, "kubelisten"),
        ("impersonate", "", "serviceaccounts", "", ns, ""),
        ("list", "", "nodes", "", "", ""),
        ("delete", "", "namespaces", "", "", work),
        ("delete", "", "events", "", work, "x"),
        // Events go through events.k8s.io only (capabilities/events.rs).
        ("create", "", "events", "", work, ""),
        ("patch", "", "events", "", work, "x"),
    ];
    let mut wrong = Vec::new();
    for access in &needed {
        if !allowed(&me, *access).await {
            wrong.push(format!("needed but denied: {access:?}"));
        }
    }
    for access in &not_needed {
        if allowed(&me, *access).await {
            wrong.push(format!("not needed but allowed: {access:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And a real request, not just a review: reading a Secret is refused.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(me.clone(), ns);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("listing Secrets as kubelisten: expected 403, got {other:?}"),
    }
    installed.delete(&client).await;
}
