//! Shared support for integration tests that run against the real local control
//! plane (etcd + kube-apiserver, see `deploy/local/README.md`).
//!
//! These tests never skip: without a reachable API server they fail loudly and
//! say how to get one (`make test`, or `make cluster-up` + `export KUBECONFIG=...`).
//!
//! There is no kube-controller-manager in that control plane, which shapes these helpers:
//! namespaces are never finalized (a deleted namespace stays `Terminating`), and no
//! `default` ServiceAccount is created in new namespaces, so [`TestNamespace`] creates it.

#![allow(dead_code)] // each test binary uses a different subset

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
    Client, Config,
};

/// Field manager used by test helpers for server-side apply.
pub const FIELD_MANAGER: &str = "kubelisten-tests";

/// Label put on every namespace created by [`TestNamespace`].
pub const TEST_NAMESPACE_LABEL: &str = "kubelisten.dev/test";

const HOW_TO_GET_A_CLUSTER: &str = "\
integration tests need the local control plane (etcd + kube-apiserver). Either run them through
    make test
  (or: deploy/local/with-cluster.sh cargo test -p kubelisten --test <name>), or start it once with
    make cluster-up        # = deploy/local/cluster.sh up
    export KUBECONFIG=$HOME/.cache/kubelisten/run/kubeconfig
  and run cargo test again.";

/// The kubeconfig to use: `$KUBECONFIG` if set (a single path), else the local
/// control plane's `$KUBELISTEN_RUN_DIR/kubeconfig` (default
/// `~/.cache/kubelisten/run/kubeconfig`) if it exists.
pub fn kubeconfig_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let run_dir = std::env::var_os("KUBELISTEN_RUN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kubelisten/run"))
        });
    match run_dir.map(|d| d.join("kubeconfig")) {
        Some(p) if p.is_file() => p,
        _ => panic!("KUBECONFIG is not set and no local control plane kubeconfig was found.\n{HOW_TO_GET_A_CLUSTER}"),
    }
}

/// Writes to `path` a kubeconfig for the test cluster (the one of [`kubeconfig_path`], its CA
/// path made absolute) that authenticates with `user` (a kubeconfig user entry, such as
/// `{"token": ...}` or `{"tokenFile": ...}`), in `namespace` if one is given.
pub fn user_kubeconfig(path: &std::path::Path, user: serde_json::Value, namespace: Option<&str>) {
    let admin_path = kubeconfig_path();
    let admin = std::fs::read_to_string(&admin_path).unwrap();
    let admin: serde_json::Value = serde_saphyr::from_str(&admin).unwrap();
    let mut cluster = admin["clusters"][0]["cluster"].clone();
    if let Some(ca) = cluster["certificate-authority"].as_str() {
        // A relative CA path is relative to the admin kubeconfig's directory.
        let ca = admin_path.parent().unwrap().join(ca);
        cluster["certificate-authority"] = serde_json::json!(ca);
    }
    let mut context = serde_json::json!({"cluster": "local", "user": "user"});
    if let Some(namespace) = namespace {
        context["namespace"] = serde_json::json!(namespace);
    }
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "local", "context": context}],
        "current-context": "local",
    });
    std::fs::write(path, kubeconfig.to_string()).unwrap();
}

/// A TCP port free now on every address (the host's health server binds `::`, dual-stack;
/// IPv4 only where there is no IPv6).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `Write` into a shared buffer: captures what a command or the host's logger writes.
#[derive(Clone, Default)]
pub struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The kube client configuration for the test cluster (see [`kubeconfig_path`]).
pub async fn config() -> Config {
    install_crypto_provider();
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read kubeconfig {}: {e}\n{HOW_TO_GET_A_CLUSTER}",
            path.display()
        )
    });
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "invalid kubeconfig {}: {e}\n{HOW_TO_GET_A_CLUSTER}",
                path.display()
            )
        })
}

/// rustls needs a process-wide crypto provider. It picks one by itself only when
/// exactly one of its `ring` / `aws-lc-rs` features is enabled (`kube` is used with
/// `default-features = false`, so that depends on the features listed for it), and
/// otherwise panics on the first TLS connection. Install ring explicitly
/// (idempotent; a provider installed earlier wins).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the test cluster, after checking that the API server answers.
///
/// Panics (never skips) with instructions when no API server is reachable.
/// A `kube::Client` is bound to the tokio runtime it was created on, so each
/// `#[tokio::test]` should call this itself rather than share one client.
pub async fn client() -> Client {
    let config = config().await;
    let url = config.cluster_url.clone();
    let client = Client::try_from(config).unwrap_or_else(|e| {
        panic!("cannot build a kube client for {url}: {e}\n{HOW_TO_GET_A_CLUSTER}")
    });
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!(
            "the Kubernetes API server at {url} is not reachable: {e}\n{HOW_TO_GET_A_CLUSTER}"
        ),
        Err(_) => panic!(
            "the Kubernetes API server at {url} did not answer within 15s\n{HOW_TO_GET_A_CLUSTER}"
        ),
    }
}

/// A short random lowercase hex string (no extra crate: std's randomly keyed hasher).
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// A uniquely named namespace (`kl-test-<random>`) for one test.
///
/// Created with its `default` ServiceAccount (normally made by the controller
/// manager, which this control plane does not run; the ServiceAccount admission
/// plugin rejects Pods without it). Deleted by [`TestNamespace::delete`] or, failing
/// that, on drop. Without a controller manager the deleted namespace stays
/// `Terminating` forever; that is expected and harmless (names are unique).
pub struct TestNamespace {
    name: String,
    config: Option<Config>,
}

impl TestNamespace {
    pub async fn new(client: &Client) -> Self {
        Self::with_prefix(client, "kl-test").await
    }

    /// Like [`TestNamespace::new`] with a different name prefix (`<prefix>-<random>`).
    pub async fn with_prefix(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        ensure_service_account(client, &name, "default")
            .await
            .unwrap_or_else(|e| panic!("creating ServiceAccount {name}/default: {e}"));
        Self {
            name,
            config: Some(config().await),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delete the namespace now (preferred over relying on drop).
    pub async fn delete(mut self) {
        self.config = None;
        delete_namespace(&client_for_cleanup(config().await), &self.name).await;
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else {
            return;
        };
        let name = self.name.clone();
        // Drop cannot await, and the test's runtime may be shutting down: delete
        // from a short-lived thread with its own runtime and client.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    delete_namespace(&client_for_cleanup(config), &name),
                )
                .await;
            });
        })
        .join();
    }
}

fn client_for_cleanup(config: Config) -> Client {
    Client::try_from(config).expect("kube client for cleanup")
}

async fn delete_namespace(client: &Client, name: &str) {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => eprintln!("warning: deleting test namespace {name}: {e}"),
    }
}

/// Create ServiceAccount `ns/name` unless it exists.
pub async fn ensure_service_account(client: &Client, ns: &str, name: &str) -> kube::Result<()> {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mint a bearer token for ServiceAccount `ns/service_account` through the
/// TokenRequest API (creating the ServiceAccount if needed).
///
/// `audiences` empty means the API server's own audience (its issuer). The API
/// server enforces a minimum `expiration_seconds` of 600.
pub async fn mint_token(
    client: &Client,
    ns: &str,
    service_account: &str,
    audiences: &[&str],
    expiration_seconds: i64,
) -> String {
    ensure_service_account(client, ns, service_account)
        .await
        .unwrap_or_else(|e| panic!("creating ServiceAccount {ns}/{service_account}: {e}"));
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{service_account}: {e}"));
    let token = response.status.map(|s| s.token).unwrap_or_default();
    assert!(
        !token.is_empty(),
        "TokenRequest for {ns}/{service_account} returned no token"
    );
    token
}

/// Server-side apply the CustomResourceDefinition in `yaml` (one document) and
/// wait until it is `Established` (at most 30 s). Returns the applied CRD.
pub async fn apply_crd_yaml(client: &Client, yaml: &str) -> CustomResourceDefinition {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(yaml)
        .unwrap_or_else(|e| panic!("parsing CustomResourceDefinition YAML: {e}"));
    let name = crd
        .metadata
        .name
        .clone()
        .expect("CustomResourceDefinition YAML has no metadata.name");
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("server-side apply of CRD {name}: {e}"));
    let established = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("CRD {name} was not Established within 30s"))
    .unwrap_or_else(|e| panic!("waiting for CRD {name} to be Established: {e}"));
    established
        .unwrap_or_else(|| panic!("CRD {name} disappeared while waiting for it to be Established"))
}

/// Path of a file under `deploy/local/testdata/` in the repository.
pub fn testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local/testdata")
        .join(file)
}

/// The core/v1 Events that `kubectl describe` shows for an object: listed in its namespace (in
/// all namespaces for a cluster-scoped object) with the field selector of kubectl's
/// `searchEvents`, which matches the object's name, namespace, kind and uid.
pub async fn described_events(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    uid: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    let api: Api<k8s_openapi::api::core::v1::Event> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!(
        "involvedObject.name={name},involvedObject.namespace={},involvedObject.kind={kind},involvedObject.uid={uid}",
        namespace.unwrap_or("")
    );
    api.list(&kube::api::ListParams::default().fields(&selector))
        .await
        .unwrap_or_else(|e| panic!("listing Events with {selector}: {e}"))
        .items
}

/// A compiler program that never finishes, for `kubelisten run --compiler`: it writes its pid
/// to the returned marker file (atomically) and sleeps. Not kubelisten's worker, it does not
/// die with its parent: kill it with [`kill_process`].
pub fn slow_compiler(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let started = dir.join("compiler-started");
    let script = dir.join("slow-compiler.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > {0}.tmp && mv {0}.tmp {0}\nexec sleep 600\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, started)
}

/// Waits until the [`slow_compiler`] whose marker is `started` runs; its pid. Panics (with
/// `log()`) if `child` exits first or after `bound`.
pub async fn compiler_started(
    started: &std::path::Path,
    child: &mut std::process::Child,
    bound: Duration,
    log: impl Fn() -> String,
) -> u32 {
    let begun = std::time::Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(started)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            return pid;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kubelisten exited ({status}) before compiling:\n{}", log());
        }
        assert!(
            begun.elapsed() < bound,
            "the compiler did not start:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process `pid`, ignoring failures.
pub fn kill_process(signal: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Waits up to `bound` for `child` to exit; kills it and returns `None` if it does not.
pub async fn exit_within(
    child: &mut std::process::Child,
    bound: Duration,
) -> Option<std::process::ExitStatus> {
    let begun = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if begun.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `events.k8s.io` Events in `namespace` about the object named `regarding`.
pub async fn events_regarding(
    client: &Client,
    namespace: &str,
    regarding: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("listing Events in {namespace}: {e}"))
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
        .collect()
}
