//! Two kubelisten processes with leader election against the local control plane: exactly one
//! dispatches; after `kill -9` of the leader the other takes the lock within lease duration +
//! two retry periods (and a second of slack); no event is dispatched by both at overlapping times; a graceful stop releases the lock,
//! so the standby takes over without waiting for the lease to expire. Both with the Lease and
//! with the ConfigMap lock.
//!
//! Takeover times are measured from the kill to the new leader's own "became the leader" log
//! line (the lock acquired), not to its `/readyz`, which also includes setting up the watches.

mod common;
mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{patch_spec, Things, GROUP, KIND, PLURAL};
use serde_json::{json, Value};

const LEASE: f64 = 3.0;
const RENEW: f64 = 2.0;
const RETRY: f64 = 0.5;

/// One dispatch seen in a process's log: (process, start µs, end µs).
type Span = (usize, i64, i64);

/// What the replicas' logs said about the lock: (process, message, µs since the epoch).
type LockLog = Arc<Mutex<Vec<(usize, String, i64)>>>;

struct Replica {
    id: usize,
    child: Child,
    port: u16,
    /// Reads the process's stderr until it closes.
    reader: std::thread::JoinHandle<()>,
}

impl Replica {
    /// Waits for the process to exit and for its log to be read to the end.
    fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        status
    }
}

/// Microseconds since the epoch, now.
fn now_micros() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

/// When replica `id` logged `message` after `after` (µs since the epoch), waiting up to 10 s
/// for the line to be read.
async fn logged_after(log: &LockLog, id: usize, message: &str, after: i64) -> i64 {
    for _ in 0..100 {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .find(|(i, m, at)| *i == id && m == message && *at >= after)
            .map(|e| e.2);
        if let Some(at) = found {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "replica {id} did not log {message:?}: {:?}",
        log.lock().unwrap()
    );
}

/// Microseconds since the epoch of an RFC 3339 UTC timestamp.
fn micros(ts: &str) -> i64 {
    let (date, time) = ts.trim_end_matches('Z').split_once('T').unwrap();
    let mut d = date.split('-').map(|x| x.parse::<i64>().unwrap());
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let mut t = time.split(':');
    let h: i64 = t.next().unwrap().parse().unwrap();
    let min: i64 = t.next().unwrap().parse().unwrap();
    let s: f64 = t.next().unwrap().parse().unwrap();
    ((days * 24 + h) * 60 + min) * 60_000_000 + (s * 1e6).round() as i64
}

fn spawn(
    id: usize,
    crd: &std::path::Path,
    ns: &str,
    lock: &str,
    spans: Arc<Mutex<Vec<Span>>>,
    lock_log: LockLog,
    kubeconfig: &std::path::Path,
) -> Replica {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["--log-format", "json", "run", "--crd"])
        .arg(crd)
        .arg("--listener")
        .arg(harness::listener("rust-logger", kubelisten::runtime::Mode::Classname).path)
        .args([
            "--namespace",
            ns,
            "--leader-election-namespace",
            ns,
            "--leader-election-lock",
            lock,
        ])
        .args(["--leader-election-identity", &format!("replica-{id}")])
        .args([
            "--lease-duration",
            &LEASE.to_string(),
            "--renew-deadline",
            &RENEW.to_string(),
            "--retry-period",
            &RETRY.to_string(),
        ])
        .args([
            "--health-port",
            &port.to_string(),
            "--health-bind",
            "127.0.0.1",
            "--status-bind",
            "off",
            "--shutdown-grace",
            "5",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            "warn,kubelisten::dispatch=debug,kubelisten::watch::leader=info,kubelisten::app=info",
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let at = micros(v["timestamp"].as_str().unwrap());
            match v["fields"]["message"].as_str() {
                Some("listener call ok") => {
                    let duration = v["fields"]["duration_us"].as_i64().unwrap_or(0);
                    spans.lock().unwrap().push((id, at - duration, at));
                }
                Some(m @ ("became the leader" | "leader lock released")) => {
                    lock_log.lock().unwrap().push((id, m.to_string(), at));
                }
                Some("standby: modules compiled ahead of a takeover") => {
                    let compiled = v["fields"]["compiled"].as_u64().unwrap_or(0);
                    let m = format!("precompiled {compiled}");
                    lock_log.lock().unwrap().push((id, m, at));
                }
                _ => {}
            }
        }
    });
    Replica {
        id,
        child,
        port,
        reader,
    }
}

/// `/readyz` of the process on `port`: (status code, body).
async fn readyz(port: u16) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Waits until exactly one of `replicas` says it leads; returns its index in `replicas`.
async fn leader_of(replicas: &[Replica], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if readyz(r.port)
                .await
                .is_some_and(|(_, b)| b.contains("leader") && !b.contains("standby"))
            {
                leaders.push(i);
            }
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [one] = leaders[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn failovers(lock: &str) {
    let t = Things::new().await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let lock_log: LockLog = Arc::default();
    let admin = common::kubeconfig_path();
    let spawn = |id| {
        let (spans, lock_log) = (spans.clone(), lock_log.clone());
        spawn(id, &t.crd, t.ns.name(), lock, spans, lock_log, &admin)
    };
    let mut replicas = vec![spawn(0), spawn(1)];
    let mut next_id = 2;

    // A steady stream of updates while leaders change.
    t.create("ticker", json!({"n": 0}), &[]).await;
    let writer = {
        let api = t.api.clone();
        tokio::spawn(async move {
            for n in 1.. {
                let _ = api
                    .patch(
                        "ticker",
                        &Default::default(),
                        &kube::api::Patch::Merge(json!({"spec": {"n": n}})),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut leader = leader_of(&replicas, Duration::from_secs(60)).await;
    // The standby sees the last renewal within a retry period, then watches the record for a
    // full lease duration, then takes it at its next attempt (another retry period); allow a
    // second of scheduling slack on this 2-core machine.
    let bound = Duration::from_secs_f64(LEASE + 2.0 * RETRY + 1.0);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut old = replicas.remove(leader);
        old.child.kill().unwrap(); // SIGKILL
        let killed_at = now_micros();
        old.wait();
        let new_leader = leader_of(&replicas, Duration::from_secs(30)).await;
        let id = replicas[new_leader].id;
        let acquired = logged_after(&lock_log, id, "became the leader", killed_at).await;
        // While it waited, the standby compiled the listener's module (a takeover does not
        // wait for the compiler).
        let precompiled = logged_after(&lock_log, id, "precompiled 1", 0).await;
        assert!(
            precompiled <= acquired,
            "replica {id} compiled after taking over"
        );
        let takeover = Duration::from_micros(u64::try_from(acquired - killed_at).unwrap());
        assert!(
            takeover <= bound,
            "round {round}: replica {id} took the lock {takeover:?} after the kill"
        );
        eprintln!("{lock}: round {round}: replica {id} took the lock {takeover:?} after the kill");
        replicas.push(spawn(next_id));
        next_id += 1;
        leader = new_leader;
    }

    // A graceful stop releases the lock: the standby takes it without waiting out the lease
    // (which, unreleased, it could not take before a lease duration after the last renewal it
    // saw: at least LEASE - RETRY after the stop).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = replicas.remove(leader);
    let old_id = old.id;
    let stopped_at = now_micros();
    nix_term(&old.child);
    let status = old.wait();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    logged_after(&lock_log, old_id, "leader lock released", stopped_at).await;
    let new_leader = leader_of(&replicas, Duration::from_secs(30)).await;
    let id = replicas[new_leader].id;
    let acquired = logged_after(&lock_log, id, "became the leader", stopped_at).await;
    let graceful = Duration::from_micros(u64::try_from(acquired - stopped_at).unwrap());
    assert!(
        graceful < Duration::from_secs_f64(LEASE - RETRY),
        "replica {id} took the released lock only {graceful:?} after the stop"
    );
    eprintln!("{lock}: graceful handover to replica {id} in {graceful:?}");

    // Let the new leader dispatch something, then stop everything.
    patch_spec(&t.api, "ticker", json!({"final": true})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer.abort();
    for r in replicas {
        nix_term(&r.child);
        r.wait();
    }

    let spans = spans.lock().unwrap().clone();
    let processes: std::collections::BTreeSet<usize> = spans.iter().map(|s| s.0).collect();
    assert!(
        processes.len() >= 4,
        "several processes dispatched over the failovers: {processes:?}"
    );
    for a in &spans {
        for b in &spans {
            if a.0 < b.0 {
                let overlap = a.1 < b.2 && b.1 < a.2;
                assert!(
                    !overlap,
                    "processes {} and {} dispatched at overlapping times: {a:?} {b:?}",
                    a.0, b.0
                );
            }
        }
    }
    t.ns.delete().await;
}

fn nix_term(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_lock_failovers() {
    failovers("lease").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configmap_lock_failovers() {
    failovers("configmap").await;
}

/// The election against the API server in-process, as `identity` on `lock` `name`.
fn elector(
    client: &kube::Client,
    ns: &str,
    lock: kubelisten::watch::leader::LockKind,
    name: &str,
    identity: &str,
) -> (
    tokio::sync::watch::Receiver<bool>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let config = kubelisten::watch::leader::LeaderConfig {
        namespace: ns.to_string(),
        name: name.to_string(),
        identity: identity.to_string(),
        lock,
        // Long enough that a loaded machine's slow requests do not exhaust the renew deadline;
        // the label hammering below outlasts it, so renewals that meet a 409 must be retried.
        lease_duration: Duration::from_secs(8),
        renew_deadline: Duration::from_secs(5),
        retry_period: Duration::from_millis(200),
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(kubelisten::watch::leader::run(
        client.clone(),
        config,
        tx,
        cancel.clone(),
        Default::default(),
    ));
    (rx, cancel, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_objects_other_fields_survive_acquiring_renewing_and_releasing() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use kubelisten::watch::leader::LockKind;

    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let labels = || Some([("app".to_string(), "keep".to_string())].into());
    let notes = || Some([("note".to_string(), "keep".to_string())].into());
    // A ConfigMap that holds data besides the lock (say, the config file), and a Lease with
    // labels and annotations.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("lock".into());
    cm.metadata.labels = labels();
    cm.metadata.annotations = notes();
    cm.data = Some([("kubelisten.yaml".to_string(), "watches: []".to_string())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    let mut lease = Lease::default();
    lease.metadata.name = Some("lock".into());
    lease.metadata.labels = labels();
    lease.metadata.annotations = notes();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    for lock in [LockKind::Configmap, LockKind::Lease] {
        let (mut leader, cancel, task) = elector(&client, ns.name(), lock, "lock", "keeper");
        tokio::time::timeout(Duration::from_secs(30), leader.wait_for(|l| *l))
            .await
            .expect("leads within 30 s")
            .unwrap();
        // Renewals (retry period 200 ms) while someone else keeps changing the object's labels
        // (a GitOps sync, `kubectl label`): renewals that meet a changed resourceVersion (409)
        // are retried, not taken for a lost lock.
        let hammer_until = tokio::time::Instant::now() + Duration::from_secs(6);
        let mut n = 0u32;
        while tokio::time::Instant::now() < hammer_until {
            n += 1;
            let patch = kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"touched": n.to_string()}}}),
            );
            let pp = kube::api::PatchParams::default();
            match lock {
                LockKind::Configmap => drop(cms.patch("lock", &pp, &patch).await.unwrap()),
                LockKind::Lease => drop(leases.patch("lock", &pp, &patch).await.unwrap()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(*leader.borrow(), "{lock:?}: still the leader");
        let check =
            |labels: &Option<std::collections::BTreeMap<String, String>>,
             annotations: &Option<std::collections::BTreeMap<String, String>>| {
                assert_eq!(labels.as_ref().unwrap()["app"], "keep", "{lock:?}");
                assert_eq!(annotations.as_ref().unwrap()["note"], "keep", "{lock:?}");
            };
        match lock {
            LockKind::Configmap => {
                let cm = cms.get("lock").await.unwrap();
                check(&cm.metadata.labels, &cm.metadata.annotations);
                assert_eq!(cm.data.unwrap()["kubelisten.yaml"], "watches: []");
                let record =
                    &cm.metadata.annotations.unwrap()["control-plane.alpha.kubernetes.io/leader"];
                assert!(record.contains("\"holderIdentity\":\"keeper\""), "{record}");
            }
            LockKind::Lease => {
                let lease = leases.get("lock").await.unwrap();
                check(&lease.metadata.labels, &lease.metadata.annotations);
                let spec = lease.spec.unwrap();
                assert_eq!(spec.holder_identity.as_deref(), Some("keeper"));
            }
        }
        cancel.cancel();
        task.await.unwrap();
        // Released, and still whole.
        match lock {
            LockKind::Configmap => {
                let cm = cms.get("lock").await.unwrap();
                assert_eq!(cm.data.unwrap()["kubelisten.yaml"], "watches: []");
                let record =
                    &cm.metadata.annotations.unwrap()["control-plane.alpha.kubernetes.io/leader"];
                assert!(record.contains("\"holderIdentity\":\"\""), "{record}");
            }
            LockKind::Lease => {
                let lease = leases.get("lock").await.unwrap();
                check(&lease.metadata.labels, &lease.metadata.annotations);
                assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(""));
            }
        }
    }
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_configmap_record_is_held_until_it_expires_not_free() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use kubelisten::watch::leader::LockKind;

    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("lock".into());
    cm.metadata.annotations = Some(
        [(
            "control-plane.alpha.kubernetes.io/leader".to_string(),
            "{\"holderIdentity\": 42".to_string(),
        )]
        .into(),
    );
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let (mut leader, cancel, task) =
        elector(&client, ns.name(), LockKind::Configmap, "lock", "taker");
    // Within the lease duration (8 s) of first seeing the record, it is not taken (checked
    // near its end)...
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!*leader.borrow(), "an unreadable record was taken as free");
    // ... and once it has not changed for that long, it is.
    tokio::time::timeout(Duration::from_secs(60), leader.wait_for(|l| *l))
        .await
        .expect("takes the expired record within 60 s")
        .unwrap();
    cancel.cancel();
    task.await.unwrap();
    ns.delete().await;
}

/// A kubeconfig in `dir` for the API server of the admin kubeconfig, as ServiceAccount
/// `ns/name` (created, with no rights of its own).
async fn service_account_kubeconfig(
    client: &kube::Client,
    dir: &std::path::Path,
    ns: &str,
    name: &str,
) -> std::path::PathBuf {
    let token = common::mint_token(client, ns, name, &[], 600).await;
    let path = dir.join("kubeconfig");
    common::user_kubeconfig(&path, json!({ "token": token }), None);
    path
}

/// A standby whose election requests are refused (its ServiceAccount may not touch the lock)
/// is not ready once they have failed for a lease, and says why: the process wires the
/// election's health into `/readyz`.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_whose_election_is_refused_is_not_ready() {
    let t = Things::new().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        service_account_kubeconfig(&t.client, dir.path(), t.ns.name(), "no-rights").await;
    let replica = spawn(
        0,
        &t.crd,
        t.ns.name(),
        "lease",
        Arc::default(),
        Arc::default(),
        &kubeconfig,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, body) = loop {
        let (code, body) = readyz(replica.port).await.unwrap_or_default();
        if body.contains("leader election has failed") || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 503, "/readyz: {body:?}");
    assert!(
        body.contains("leader election has failed") && body.contains("forbidden"),
        "/readyz: {body:?}"
    );
    nix_term(&replica.child);
    let status = replica.wait();
    assert!(status.success(), "a standby stops with exit 0: {status:?}");
    t.ns.delete().await;
}

/// A standby compiling its modules ahead of a takeover is not ready (a rolling update waits
/// for it); a stop while it waits for that compile, having just won the lock, ends it at once
/// with status 0 and the lock released. The compiler here never finishes (a script that sleeps).
#[tokio::test(flavor = "multi_thread")]
async fn a_compiling_standby_is_not_ready_and_stops_at_once() {
    use k8s_openapi::api::coordination::v1::Lease;
    const BOUND: Duration = Duration::from_secs(60);
    let t = Things::new().await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    let ns = t.ns.name().to_string();
    // Another holder has the lock, for a long time.
    let leases: kube::Api<Lease> = kube::Api::namespaced(t.client.clone(), &ns);
    let held = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("kubelisten".into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("someone-else".into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Default::default()
        }),
    };
    leases.create(&Default::default(), &held).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (compiler, started) = common::slow_compiler(dir.path());
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["run", "--crd"])
        .arg(&t.crd)
        .arg("--listener")
        .arg(harness::listener("rust-logger", kubelisten::runtime::Mode::Classname).path)
        .args(["--namespace", &ns, "--leader-election-namespace", &ns])
        .args(["--leader-election-identity", "replica-0"])
        .args(["--lease-duration", &LEASE.to_string()])
        .args(["--renew-deadline", &RENEW.to_string()])
        .args(["--retry-period", &RETRY.to_string()])
        .args([
            "--health-port",
            &port.to_string(),
            "--health-bind",
            "127.0.0.1",
            "--status-bind",
            "off",
        ])
        .arg("--compiler")
        .arg(&compiler)
        .env("KUBECONFIG", common::kubeconfig_path())
        .env("KUBELISTEN_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let begun = Instant::now();
    let compiler_pid = common::compiler_started(&started, &mut child, BOUND, String::new).await;
    // Not ready while it compiles.
    let ready = loop {
        if let Some(answer) = readyz(port).await {
            break answer;
        }
        assert!(begun.elapsed() < BOUND, "no /readyz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        ready,
        (
            503,
            "not ready: standby, compiling the listeners' modules ahead of a takeover\n".into()
        )
    );
    // The lock becomes free: it takes it, and waits for the module being compiled.
    leases
        .delete("kubelisten", &Default::default())
        .await
        .unwrap();
    loop {
        let holder = leases
            .get_opt("kubelisten")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        if holder
            .as_deref()
            .is_some_and(|h| h.starts_with("replica-0"))
        {
            break;
        }
        assert!(begun.elapsed() < BOUND * 2, "the lock was not taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix_term(&child);
    let status = common::exit_within(&mut child, BOUND).await;
    common::kill_process("-KILL", compiler_pid);
    let status = status.expect("no exit within the bound of SIGTERM");
    assert!(status.success(), "{status:?}");
    // The lock was released on the way out.
    let holder = leases
        .get_opt("kubelisten")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_default();
    assert!(holder.is_empty(), "the lock is still held by {holder:?}");
    t.ns.delete().await;
}
