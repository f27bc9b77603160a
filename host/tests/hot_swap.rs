//! Hot swap of listener modules from a ConfigMap, against the local control plane.

mod common;
mod harness;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use harness::{TestHost, Things};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubelisten::event::EventKind;
use kubelisten::hotswap::ModulesConfigMap;
use serde_json::json;
use support::Capture;

fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(harness::listener(name, kubelisten::runtime::Mode::Reference).path).unwrap()
}

const LISTENERS: &str =
    "listeners:\n  - name: counter\n    module: counter.wasm\n    mode: reference\n";

fn configmap(name: &str, listeners: &str, modules: &[(&str, Vec<u8>)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "listeners.yaml".to_string(),
            listeners.to_string(),
        )])),
        binary_data: Some(
            modules
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `versioned` log lines: (version, object name, rv, count).
fn lines(capture: &Capture) -> Vec<(String, String, u64, u64)> {
    capture
        .messages_of("counter")
        .iter()
        .filter_map(|m| {
            let mut parts = m.strip_prefix("versioned ")?.split(' ');
            let version = parts.next()?.to_string();
            let object = parts.next()?.rsplit('/').next()?.to_string();
            let rv = parts.next()?.strip_prefix("rv=")?.parse().ok()?;
            let count = parts.next()?.strip_prefix("count=")?.parse().ok()?;
            Some((version, object, rv, count))
        })
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Creates the Thing `name` and waits until the listener handled it: the version and count it
/// reported.
async fn handled(s: &Setup, name: &str) -> (String, u64) {
    s.t.create(name, json!({}), &[]).await;
    let capture = s.capture.clone();
    eventually(&format!("the listener to handle {name}"), || {
        lines(&capture).iter().any(|l| l.1 == name)
    })
    .await;
    let (version, _, _, count) = lines(&capture)
        .into_iter()
        .find(|l| l.1 == name)
        .expect("handled");
    (version, count)
}

/// The digest the host reports for a module with these (decoded) bytes.
fn digest_of(module: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(module)))
}

/// GETs `path` from `host` until `check` accepts the body (up to 60 s; the parts of a swap
/// after the chain switch, such as metrics and `/status`'s rejections, follow it); returns it.
async fn body_until(
    host: &TestHost,
    path: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let mut body = String::new();
    for _ in 0..600 {
        body = host.get(path).await.1;
        if check(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; {path}:\n{body}");
}

/// Waits until `/status` shows `counter` running the module with these bytes.
async fn counter_runs(host: &TestHost, module: &[u8]) {
    runs(host, "counter", module).await;
}

/// Waits until `/status` shows `listener` running the module with these bytes.
async fn runs(host: &TestHost, listener: &str, module: &[u8]) {
    let digest = digest_of(module);
    body_until(
        host,
        "/status",
        &format!("{listener} to run {digest}"),
        |body| {
            serde_json::from_str::<serde_json::Value>(body).is_ok_and(|status| {
                status["watches"][0]["listeners"]
                    .as_array()
                    .is_some_and(|ls| {
                        ls.iter()
                            .any(|l| l["name"] == listener && l["digest"] == *digest)
                    })
            })
        },
    )
    .await;
}

struct Setup {
    t: Things,
    host: TestHost,
    capture: Arc<Capture>,
    cms: Api<ConfigMap>,
}

/// Creates the ConfigMap `modules` in `t`'s namespace: [`LISTENERS`] with `first` as
/// `counter.wasm`.
async fn modules_configmap(t: &Things, first: Vec<u8>) -> Api<ConfigMap> {
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    cms.create(
        &PostParams::default(),
        &configmap("modules", LISTENERS, &[("counter.wasm", first)]),
    )
    .await
    .unwrap();
    cms
}

async fn setup(first: Vec<u8>) -> Setup {
    let t = Things::new().await;
    let cms = modules_configmap(&t, first).await;
    host_for(t, cms).await
}

/// A host on `t`'s watch with no listeners of its own, taking them from the ConfigMap
/// `modules` of `cms` (which must exist).
async fn host_for(t: Things, cms: Api<ConfigMap>) -> Setup {
    let config = t.watch(vec![]);
    let capture = Arc::new(Capture::default());
    let runtime = harness::runtime_with_cluster(&t.client, &config, capture.clone());
    let mut settings = harness::settings(4);
    settings.modules = Some(ModulesConfigMap {
        namespace: t.ns.name().into(),
        name: "modules".into(),
    });
    let host = t.start_host(&runtime, &config, &settings).await;
    Setup {
        t,
        host,
        capture,
        cms,
    }
}

/// A host on `t`'s watch taking its listeners from the ConfigMap `modules` (which must exist)
/// and serving their cluster calls with the ConfigMap's grants, synced; with its runtime (keep
/// it as long as the host).
async fn cluster_host(
    t: &Things,
    capture: Arc<Capture>,
) -> (TestHost, kubelisten::runtime::Runtime) {
    let config = t.watch(vec![]);
    let mut settings = harness::settings(2);
    settings.modules = Some(ModulesConfigMap {
        namespace: t.ns.name().into(),
        name: "modules".into(),
    });
    let (host, runtime) =
        TestHost::start_serving_cluster(&t.client, &config, &settings, capture).await;
    host.wait_synced().await;
    (host, runtime)
}

async fn push(cms: &Api<ConfigMap>, listeners: &str, modules: &[(&str, Vec<u8>)]) {
    let cm = configmap("modules", listeners, modules);
    cms.patch(
        "modules",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&cm),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_under_load_process_every_event_exactly_once_and_keep_state() {
    let s = setup(guest_bytes("versioned-v1")).await;
    for i in 0..8 {
        s.t.create(&format!("obj-{i}"), json!({"n": 0}), &[]).await;
    }
    // The writer goes on until the swaps are done (and 60 rounds at least), so every swap meets
    // a stream of events however long it takes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let things = s.t.api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = HashMap::new();
            let mut rounds = 0;
            for n in 1.. {
                if n > 60 && stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                rounds = n;
                for i in 0..8 {
                    let name = format!("obj-{i}");
                    let o = things
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"n": n}})),
                        )
                        .await
                        .unwrap();
                    last.insert(
                        name,
                        o.metadata.resource_version.unwrap().parse::<u64>().unwrap(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (last, rounds)
        })
    };
    for version in ["versioned-v2", "versioned-v1", "versioned-v2"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let want = version.trim_start_matches("versioned-").to_string();
        let capture = s.capture.clone();
        let before = lines(&capture).len();
        push(&s.cms, LISTENERS, &[("counter.wasm", guest_bytes(version))]).await;
        eventually(&format!("{version} to serve"), || {
            lines(&capture)[before..].iter().any(|l| l.0 == want)
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (last, rounds) = writer.await.unwrap();
    let capture = s.capture.clone();
    eventually("every final state", || {
        let seen = lines(&capture);
        last.iter()
            .all(|(name, rv)| seen.iter().any(|l| &l.1 == name && l.2 == *rv))
    })
    .await;
    let seen = lines(&s.capture);
    // Exactly once: no (object, rv) twice; and every object's rvs arrive in increasing order.
    let mut per_object: HashMap<&str, Vec<u64>> = HashMap::new();
    for (_, object, rv, _) in &seen {
        per_object.entry(object).or_default().push(*rv);
    }
    assert_eq!(per_object.len(), 8);
    for (object, rvs) in &per_object {
        assert!(
            rvs.windows(2).all(|w| w[0] < w[1]),
            "{object}: out of order or twice: {rvs:?}"
        );
        assert_eq!(
            rvs.len(),
            rounds + 1,
            "{object}: create + {rounds} updates, each exactly once"
        );
    }
    // Both versions served, and the count went on across every swap (state hand-over).
    let versions: std::collections::BTreeSet<&str> = seen.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(versions, ["v1", "v2"].into());
    let counts: Vec<u64> = seen.iter().map(|l| l.3).collect();
    assert_eq!(
        counts,
        (1..=counts.len() as u64).collect::<Vec<_>>(),
        "the counter never restarted"
    );
    s.host.stop().await;
    s.t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_hand_over_the_counter_restarts_and_compressed_modules_load() {
    let s = setup(guest_bytes("versioned-v1")).await;
    s.t.create("a", json!({}), &[]).await;
    s.t.create("b", json!({}), &[]).await;
    let capture = s.capture.clone();
    eventually("two counts", || lines(&capture).len() >= 2).await;
    // v3 has no snapshot/restore: the state does not survive. Shipped gzip-compressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&guest_bytes("versioned-v3")).unwrap();
    push(
        &s.cms,
        &LISTENERS.replace("counter.wasm", "counter.wasm.gz"),
        &[("counter.wasm.gz", gz.finish().unwrap())],
    )
    .await;
    counter_runs(&s.host, &guest_bytes("versioned-v3")).await;
    s.t.create("c", json!({}), &[]).await;
    eventually("v3 to serve", || {
        lines(&capture).iter().any(|l| l.0 == "v3")
    })
    .await;
    let v3 = lines(&capture).into_iter().find(|l| l.0 == "v3").unwrap();
    assert_eq!(v3.3, 1, "no hand-over: the count starts from zero again");
    // zstd-compressed v1 is accepted too.
    let zst = ruzstd::encoding::compress_to_vec(
        &guest_bytes("versioned-v1")[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    push(
        &s.cms,
        &LISTENERS.replace("counter.wasm", "counter.wasm.zst"),
        &[("counter.wasm.zst", zst)],
    )
    .await;
    counter_runs(&s.host, &guest_bytes("versioned-v1")).await;
    s.t.create("d", json!({}), &[]).await;
    eventually("zstd v1 to serve", || {
        lines(&capture).iter().any(|l| l.0 == "v1" && l.1 == "d")
    })
    .await;
    // Only what runs now is in the info metric: the v3 series is gone (the metric follows the
    // chain switch).
    let v1 = digest_of(&guest_bytes("versioned-v1"));
    let only_v1 = [format!(
        "kubelisten_listener_info{{listener=\"counter\",mode=\"reference\",digest=\"{v1}\"}} 1"
    )];
    body_until(
        &s.host,
        "/metrics",
        "only v1 in kubelisten_listener_info",
        |metrics| {
            let info: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("kubelisten_listener_info{listener=\"counter\""))
                .collect();
            info == only_v1
        },
    )
    .await;
    s.host.stop().await;
    s.t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_updates_are_rejected_with_an_event_and_the_running_version_keeps_serving() {
    let s = setup(guest_bytes("versioned-v1")).await;
    let core_module = wat::parse_str("(module (func (export \"create\")))").unwrap();
    let other_world = wat::parse_str(
        r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
             (func (export "hello") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "corrupt",
            LISTENERS.into(),
            b"\0asm\x0d\0\x01\0garbage".to_vec(),
            "ModuleRejected",
        ),
        (
            "core module",
            LISTENERS.into(),
            core_module,
            "ModuleRejected",
        ),
        (
            "wrong world",
            LISTENERS.into(),
            other_world,
            "ModuleRejected",
        ),
        (
            "broken listeners.yaml",
            "listeners:\n  - name: counter\n    modul: counter.wasm\n".into(),
            guest_bytes("versioned-v2"),
            "ListenersRejected",
        ),
    ];
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.t.client.clone(), s.t.ns.name());
    for (i, (what, listeners, module, reason)) in cases.into_iter().enumerate() {
        let digest = digest_of(&module);
        push(&s.cms, &listeners, &[("counter.wasm", module)]).await;
        // This update's rejection is on record (its Event follows the swap).
        let whole_file = reason == "ListenersRejected";
        eventually(&format!("the {what} update to be rejected"), || {
            if whole_file {
                s.host.rejection("*").is_some()
            } else {
                s.host
                    .rejection("counter")
                    .is_some_and(|r| r.digest.as_deref() == Some(digest.as_str()))
            }
        })
        .await;
        wait_for_note(&events, reason, &format!("a {reason} Event"), |_| true).await;
        // The previous version keeps serving.
        let name = format!("after-{i}");
        s.t.create(&name, json!({}), &[]).await;
        let capture = s.capture.clone();
        eventually(&format!("v1 to serve after the {what} update"), || {
            lines(&capture).iter().any(|l| l.1 == name && l.0 == "v1")
        })
        .await;
    }
    // /status shows the running digest and the last rejected update.
    let (_, body) = s.host.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let counter = &status["watches"][0]["listeners"][0];
    assert_eq!(counter["name"], "counter", "{status}");
    assert!(
        counter["digest"].as_str().unwrap().starts_with("sha256:"),
        "{status}"
    );
    let error = counter["rejected"]["error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty() && !error.starts_with("listener "),
        "the error says what is wrong, without repeating the listener's name: {status}"
    );
    // The whole listeners.yaml of the last update is rejected, which only /status's top-level
    // `rejected` can show (no listener carries it); v1 runs, so the process stays ready.
    assert!(
        status["rejected"]["*"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("modul")),
        "{status}"
    );
    assert_eq!(
        s.host.get("/readyz").await,
        (200, "ok: leader\n".to_string())
    );
    let notes = notes_of(&events, "ModuleRejected").await;
    assert!(!notes.is_empty());
    // ... and the rejections are counted.
    let (_, metrics) = s.host.get("/metrics").await;
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "kubelisten_listener_reloads_total{listener=\"counter\",outcome=\"rejected\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no rejected reloads counted:\n{metrics}"))
        .parse()
        .unwrap();
    // At least corrupt, core module and wrong world (a re-read of the same update counts again).
    assert!(rejected >= 3.0, "{rejected} rejections counted");
    for note in &notes {
        assert_eq!(
            note.matches("listener counter:").count(),
            1,
            "the note names the listener once: {note}"
        );
    }
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// An update whose module compiles but cannot be instantiated with its limits (the same
/// working module, with one wasm page of memory where a Rust guest starts with 17) is rejected
/// like a module that does not load: the running instance keeps serving, with its state.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_that_cannot_be_instantiated_with_its_limits_is_rejected() {
    let v1 = guest_bytes("versioned-v1");
    let s = setup(v1.clone()).await;
    assert_eq!(handled(&s, "before").await, ("v1".into(), 1));
    let one_page = format!("{LISTENERS}    limits: {{memory-bytes: 65536}}\n");
    push(&s.cms, &one_page, &[("counter.wasm", v1.clone())]).await;
    let digest = digest_of(&v1);
    eventually("the update to be rejected", || {
        s.host.rejection("counter").is_some_and(|r| {
            r.digest.as_deref() == Some(digest.as_str())
                && r.error.starts_with("cannot be instantiated: memory trap: ")
                && r.error.ends_with("(limits.memory-bytes)")
        })
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.t.client.clone(), s.t.ns.name());
    wait_for_note(
        &events,
        "ModuleRejected",
        "a ModuleRejected Event saying the module cannot be instantiated",
        |n| n.starts_with("listener counter: cannot be instantiated: "),
    )
    .await;
    // `kubectl describe configmap modules` lists it: the Event carries the ConfigMap's uid.
    let uid = s.cms.get("modules").await.unwrap().metadata.uid.unwrap();
    let described = common::described_events(
        &s.t.client,
        "ConfigMap",
        Some(s.t.ns.name()),
        "modules",
        &uid,
    )
    .await;
    assert!(
        described
            .iter()
            .any(|e| e.reason.as_deref() == Some("ModuleRejected")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("listener counter: cannot be instantiated: "))),
        "{described:?}"
    );
    // The instance that ran before keeps serving: its count goes on.
    assert_eq!(handled(&s, "after").await, ("v1".into(), 2));
    // /status shows v1 running and the rejection; the process stays ready.
    let (_, body) = s.host.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let counter = &status["watches"][0]["listeners"][0];
    assert_eq!(counter["digest"], *digest, "{status}");
    assert!(
        counter["rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot be instantiated")),
        "{status}"
    );
    assert_eq!(
        s.host.get("/readyz").await,
        (200, "ok: leader\n".to_string())
    );
    let (_, metrics) = s.host.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            == r#"kubelisten_listener_reloads_total{listener="counter",outcome="rejected"} 1"#),
        "{metrics}"
    );
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// An Event's note and series count.
type Counted = (String, i32);

/// The Warning Events of the modules ConfigMap with `reason`: (note, series count).
async fn rejection_events(t: &Things, reason: &str) -> Vec<Counted> {
    let mut found: Vec<Counted> = common::events_regarding(&t.client, t.ns.name(), "modules")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            (e.note.unwrap_or_default(), count)
        })
        .collect();
    found.sort();
    found
}

/// Two listeners rejected by one update are two Events, each naming its listener, which
/// `kubectl describe configmap` lists (they carry the ConfigMap's uid). The same rejections
/// again within the series window raise the counts of those Events; a different error is a new
/// Event rather than a higher count on the stale one.
#[tokio::test(flavor = "multi_thread")]
async fn each_rejection_is_an_event_of_its_own_listed_by_kubectl_describe() {
    let s = setup(guest_bytes("versioned-v1")).await;
    let garbage = b"\0asm\x0d\0\x01\0garbage".to_vec();
    let core_module = wat::parse_str("(module (func (export \"create\")))").unwrap();
    let two_bad =
        format!("{LISTENERS}  - name: a\n    module: a.wasm\n  - name: b\n    module: b.wasm\n");
    let modules = |a: Vec<u8>| {
        vec![
            ("counter.wasm", guest_bytes("versioned-v1")),
            ("a.wasm", a),
            ("b.wasm", core_module.clone()),
        ]
    };
    push(&s.cms, &two_bad, &modules(garbage.clone())).await;
    let wait_for = async |what: &str, check: &dyn Fn(&[Counted]) -> bool| {
        let mut found = Vec::new();
        for _ in 0..150 {
            found = rejection_events(&s.t, "ModuleRejected").await;
            if check(&found) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for {what}; ModuleRejected Events: {found:?}");
    };
    let first = wait_for("an Event for each rejected listener", &|found| {
        found.len() == 2
    })
    .await;
    assert!(first[0].0.starts_with("listener a: "), "{first:?}");
    assert!(first[1].0.starts_with("listener b: "), "{first:?}");
    assert_eq!((first[0].1, first[1].1), (1, 1), "{first:?}");

    // `kubectl describe configmap modules` lists both.
    let uid = s.cms.get("modules").await.unwrap().metadata.uid.unwrap();
    let mut described: Vec<String> = common::described_events(
        &s.t.client,
        "ConfigMap",
        Some(s.t.ns.name()),
        "modules",
        &uid,
    )
    .await
    .into_iter()
    .filter(|e| e.reason.as_deref() == Some("ModuleRejected"))
    .filter_map(|e| e.message)
    .collect();
    described.sort();
    let notes: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(described, notes);

    // Another update (a comment added) rejects both again with the same errors: no new Events,
    // the counts go up.
    push(&s.cms, &format!("# again\n{two_bad}"), &modules(garbage)).await;
    let again = wait_for("both Events to count the repeat", &|found| {
        found.iter().all(|(_, count)| *count == 2)
    })
    .await;
    let again_notes: Vec<String> = again.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(again_notes, notes, "the same two Events");

    // A different error for `a`: a new Event with it; the earlier ones stay as they were.
    let other_world = wat::parse_str(
        r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
             (func (export "hello") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    push(&s.cms, &two_bad, &modules(other_world)).await;
    let third = wait_for("an Event for the new error", &|found| found.len() == 3).await;
    let fresh: Vec<_> = third
        .iter()
        .filter(|(note, _)| !notes.contains(note))
        .collect();
    assert_eq!(fresh.len(), 1, "{third:?}");
    assert!(fresh[0].0.starts_with("listener a: "), "{third:?}");
    assert_eq!(fresh[0].1, 1, "{third:?}");
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// After an update whose one listener is rejected and whose other is swapped in, going back to
/// the last good content applies it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_after_a_partly_rejected_update_restores_the_last_good_version() {
    let s = setup(guest_bytes("versioned-v1")).await;
    let two = format!("{LISTENERS}  - name: other\n    module: other.wasm\n    mode: reference\n");
    let good = [
        ("counter.wasm", guest_bytes("versioned-v1")),
        ("other.wasm", guest_bytes("versioned-v1")),
    ];
    push(&s.cms, &two, &good).await;
    s.t.create("a", json!({"n": 0}), &[]).await;
    let capture = s.capture.clone();
    eventually("both listeners on v1", || {
        ["counter", "other"].iter().all(|l| {
            capture
                .messages_of(l)
                .iter()
                .any(|m| m.starts_with("versioned v1 "))
        })
    })
    .await;
    // `other` is rejected (corrupt), `counter` goes to v2.
    let partly_bad = [
        ("counter.wasm", guest_bytes("versioned-v2")),
        ("other.wasm", b"\0asm\x0d\0\x01\0garbage".to_vec()),
    ];
    let mut n = 0;
    for (content, want) in [(&partly_bad, "v2"), (&good, "v1")] {
        push(&s.cms, &two, content).await;
        // Changes until `counter` handles one with the wanted version: after the revert to the
        // last good content, that is v1 again.
        let capture = s.capture.clone();
        let before = lines(&capture).len();
        let mut served = false;
        for _ in 0..60 {
            n += 1;
            s.t.api
                .patch(
                    "a",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"n": n}})),
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if lines(&capture)[before..].iter().any(|l| l.0 == want) {
                served = true;
                break;
            }
        }
        assert!(served, "counter never served {want}: {:?}", lines(&capture));
        // /status shows the rejection of `other` while the ConfigMap holds the corrupt module,
        // and none once it holds the good one again (the record follows the chain switch).
        body_until(
            &s.host,
            "/status",
            &format!("other's rejection after {want}"),
            |body| {
                let status: serde_json::Value = serde_json::from_str(body).unwrap();
                let other = status["watches"][0]["listeners"]
                    .as_array()
                    .and_then(|ls| ls.iter().find(|l| l["name"] == "other"))
                    .cloned()
                    .unwrap_or_else(|| panic!("no listener other: {status}"));
                other["rejected"].is_null() == (want == "v1")
            },
        )
        .await;
    }
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// `kubelisten run --config F --modules-configmap NS/NAME`: the file names the watches (here with
/// no listeners at all) and the ConfigMap supplies the chains.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_names_the_watches_and_the_configmap_supplies_the_listeners() {
    let t = Things::new().await;
    modules_configmap(&t, guest_bytes("versioned-v1")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubelisten.yaml");
    std::fs::write(
        &config,
        format!(
            "watches:\n  - name: things\n    crd: {}\n    namespaces: [{}]\n",
            t.crd.display(),
            t.ns.name()
        ),
    )
    .unwrap();
    let log = dir.path().join("kubelisten.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args([
            "run",
            "--health-port",
            "0",
            "--status-bind",
            "off",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&config)
        .args(["--modules-configmap", &format!("{}/modules", t.ns.name())])
        .env("KUBECONFIG", common::kubeconfig_path())
        .env("KUBELISTEN_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    // Created before or after the host's initial list: either way it reaches the listener.
    common::apply_crd_yaml(
        &t.client,
        &harness::crd_yaml(harness::GROUP, harness::KIND, harness::PLURAL),
    )
    .await;
    t.create("seen", json!({}), &[]).await;
    let wanted = format!("versioned v1 {}/seen", t.ns.name());
    let mut found = false;
    for _ in 0..600 {
        if std::fs::read_to_string(&log).unwrap().contains(&wanted) {
            found = true;
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "kubelisten exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "the ConfigMap's listener never handled the object; kubelisten's log:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    t.ns.delete().await;
}

/// kubelisten started from the ConfigMap alone (its listeners.yaml lists the watches): an update
/// that changes a watch is rejected as a whole, naming the watch, while the running listener
/// keeps serving; an update that keeps the watches applies.
#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_that_defines_the_watches_cannot_change_them_while_running() {
    let t = Things::new().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    let listeners = |namespaces: &str| {
        format!(
            "watches:\n  - name: things\n    crd: {}\n    namespaces: [{namespaces}]\n    listeners:\n      - {{name: counter, module: counter.wasm, mode: reference}}\n",
            t.crd.display()
        )
    };
    cms.create(
        &PostParams::default(),
        &configmap(
            "modules",
            &listeners(t.ns.name()),
            &[("counter.wasm", guest_bytes("versioned-v1"))],
        ),
    )
    .await
    .unwrap();
    // The watches kubelisten started from are the ConfigMap's (what `run` parses from it).
    let config = t.watch(vec![]);
    let capture = Arc::new(Capture::default());
    let runtime = harness::runtime_with_cluster(&t.client, &config, capture.clone());
    let mut settings = harness::settings(2);
    settings.modules = Some(ModulesConfigMap {
        namespace: t.ns.name().into(),
        name: "modules".into(),
    });
    settings.watches_from_modules = true;
    let host = t.start_host(&runtime, &config, &settings).await;
    let served_by = async |name: &str, version: &str| {
        t.create(name, json!({}), &[]).await;
        let capture = capture.clone();
        eventually(&format!("{version} to handle {name}"), || {
            lines(&capture)
                .iter()
                .any(|l| l.1 == name && l.0 == version)
        })
        .await;
    };
    served_by("first", "v1").await;

    // Another namespace for the watch, and a new module: rejected as a whole.
    push(
        &cms,
        &listeners(&format!("{}, elsewhere", t.ns.name())),
        &[("counter.wasm", guest_bytes("versioned-v2"))],
    )
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), t.ns.name());
    wait_for_note(
        &events,
        "ListenersRejected",
        "a ListenersRejected Event naming the changed watch",
        |n| n.contains("changed: things") && n.contains("restart"),
    )
    .await;
    served_by("second", "v1").await;

    // A process that starts (or a standby that takes over) now would run without listeners:
    // it refuses to start instead, so that a restart reads the new watches.
    let err = kubelisten::app::start(
        t.client.clone(),
        &runtime,
        &config,
        &settings,
        None,
        Arc::new(kubelisten::metrics::Metrics::new()),
        None,
    )
    .await
    .err()
    .expect("a start with changed watches fails");
    assert!(
        err.to_string().contains("changed: things") && err.to_string().contains("restart"),
        "{err:#}"
    );

    // A bare listener set would be fine now, but no restart could start from it: rejected.
    push(
        &cms,
        "listeners:\n  - {name: counter, module: counter.wasm, mode: reference}\n",
        &[("counter.wasm", guest_bytes("versioned-v2"))],
    )
    .await;
    // (The Event of this rejection joins the series of the previous one: same reason, same
    // ConfigMap, within a minute.)
    eventually("the rejection of the bare listener set", || {
        host.rejection("*")
            .is_some_and(|r| r.error.contains("must keep it"))
    })
    .await;
    served_by("third", "v1").await;

    // The same watch again, with the new module: applied.
    push(
        &cms,
        &listeners(t.ns.name()),
        &[("counter.wasm", guest_bytes("versioned-v2"))],
    )
    .await;
    let mut served = false;
    for i in 0..100 {
        t.create(&format!("fourth-{i}"), json!({}), &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if lines(&capture).iter().any(|l| l.0 == "v2") {
            served = true;
            break;
        }
    }
    assert!(served, "v2 never served once the watches were unchanged");
    host.stop().await;
    t.ns.delete().await;
}

/// The `probe-result` of the probe listener for `object`.
fn probe_result(capture: &Capture, object: &str) -> Option<serde_json::Value> {
    capture.messages_of("probe").iter().rev().find_map(|m| {
        let v: serde_json::Value = serde_json::from_str(m.strip_prefix("probe-result ")?).ok()?;
        (v["object"] == object).then_some(v)
    })
}

/// A ConfigMap update that changes only a listener's grants takes effect (the instance is kept),
/// and an entry naming a watch that does not exist is rejected like any bad update.
#[tokio::test(flavor = "multi_thread")]
async fn grant_changes_apply_to_an_unchanged_module_and_unknown_watches_are_rejected() {
    let t = Things::new().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    let probe = guest_bytes("probe");
    let granted = "listeners:\n  - name: probe\n    module: probe.wasm\n    capabilities:\n      grants:\n        - {apiGroups: [watch.kubelisten.dev], resources: [things], verbs: [get]}\n";
    cms.create(
        &PostParams::default(),
        &configmap("modules", granted, &[("probe.wasm", probe.clone())]),
    )
    .await
    .unwrap();
    let capture = Arc::new(Capture::default());
    let (host, _runtime) = cluster_host(&t, capture.clone()).await;
    let get_itself = json!([{"op": "get"}]).to_string();
    let outcome = async |name: &str| {
        t.create(name, json!({}), &[("kubelisten.dev/probe", &get_itself)])
            .await;
        let capture = capture.clone();
        eventually(&format!("the probe result of {name}"), || {
            probe_result(&capture, name).is_some()
        })
        .await;
        let result = probe_result(&capture, name).unwrap();
        let errors = result["results"][0]["errors"].as_object().unwrap().clone();
        errors.keys().next().cloned().unwrap_or_else(|| "ok".into())
    };
    assert_eq!(outcome("granted").await, "ok");

    let swaps = || *host.chain(0).swaps().borrow();
    let before = swaps();
    // The same module without grants, plus an entry for a watch that does not exist.
    push(
        &cms,
        "listeners:\n  - name: probe\n    module: probe.wasm\n  - {name: stray, watch: nope, module: probe.wasm}\n",
        &[("probe.wasm", probe)],
    )
    .await;
    let mut revoked = false;
    for i in 0..60 {
        if outcome(&format!("revoked-{i}")).await == "forbidden-by-policy" {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        revoked,
        "the grant removed from the ConfigMap still applies"
    );
    // The grant change sets the chain again (ending the waits of events retrying on it) ...
    let regranted = swaps();
    assert!(regranted > before, "{before} -> {regranted}");

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), t.ns.name());
    // Events are published after the swap, so the grant change can be seen before them.
    wait_for_note(
        &events,
        "ModuleRejected",
        "a Warning Event naming the stray entry",
        |n| n.starts_with("listener stray: no watch \"nope\""),
    )
    .await;
    let (_, metrics) = host.get("/metrics").await;
    let reloads = |listener: &str, outcome: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "kubelisten_listener_reloads_total{{listener=\"{listener}\",outcome=\"{outcome}\"}} "
            ))
            .map(str::to_string)
        })
    };
    assert!(reloads("stray", "rejected").is_some(), "{metrics}");
    assert_eq!(reloads("stray", "applied"), None, "{metrics}");
    assert_eq!(
        reloads("probe", "applied").as_deref(),
        Some("1"),
        "a grant change keeps the instance: {metrics}"
    );
    // ... an update that leaves the chain as it is does not.
    push(
        &cms,
        "listeners:\n  - name: probe\n    module: probe.wasm\n  - {name: stray2, watch: nope, module: probe.wasm}\n",
        &[("probe.wasm", guest_bytes("probe"))],
    )
    .await;
    // (The rejections show the swap: the first stray entry's goes at its end.)
    eventually("the swap that rejects the second stray entry", || {
        host.rejection("stray2").is_some() && host.rejection("stray").is_none()
    })
    .await;
    assert_eq!(swaps(), regranted, "the unchanged chain was set again");
    host.stop().await;
    t.ns.delete().await;
}

/// Waits (up to 30 s) until an Event in `events` with `reason` has a note that `matches`.
async fn wait_for_note(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    reason: &str,
    what: &str,
    matches: impl Fn(&str) -> bool,
) {
    let mut notes = Vec::new();
    for _ in 0..150 {
        notes = notes_of(events, reason).await;
        if notes.iter().any(|n| matches(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; {reason} notes: {notes:?}");
}

/// The notes of the Events in `events` with `reason`.
async fn notes_of(events: &Api<k8s_openapi::api::events::v1::Event>, reason: &str) -> Vec<String> {
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

/// A process that starts with a module that does not load runs its chain without that listener:
/// it says so in /readyz (503) until a good version arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_rejected_at_start_keeps_the_process_unready_until_a_good_version_comes() {
    let s = setup(b"\0asm\x0d\0\x01\0garbage".to_vec()).await;
    let (code, body) = s.host.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("listener counter: ") && body.contains("nothing runs in its place"),
        "{body}"
    );
    push(
        &s.cms,
        LISTENERS,
        &[("counter.wasm", guest_bytes("versioned-v1"))],
    )
    .await;
    body_until(&s.host, "/readyz", "ready with the good version", |b| {
        b == "ok: leader\n"
    })
    .await;
    assert_eq!(s.host.get("/readyz").await.0, 200);
    let (_, body) = s.host.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rejected"], json!({}), "{status}");
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// A process started with a modules ConfigMap that does not exist yet runs its watch with no
/// listener: /readyz answers 503 naming the ConfigMap until it is created. An object created
/// meanwhile is acknowledged with nobody called; once the ConfigMap is there, its listener joins
/// and gets that object once, as the catch-up create.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_modules_configmap_keeps_the_process_unready_until_it_is_created() {
    let t = Things::new().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    let Setup {
        t,
        mut host,
        capture,
        cms,
    } = host_for(t, cms).await;
    let (code, body) = host.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    let missing = format!("modules ConfigMap {}/modules not found", t.ns.name());
    assert!(body.contains(&missing), "{body}");
    let early = |d: &kubelisten::dispatch::dispatcher::Dispatched| d.event.meta.name == "early";
    // Acknowledged with nobody called, as the README says (waited for: the listener can then
    // learn of it only from its catch-up) ...
    t.create("early", json!({}), &[]).await;
    host.wait_for(
        Duration::from_secs(60),
        "the create of early to be acknowledged",
        |seen| seen.iter().any(early),
    )
    .await;
    assert!(capture.lines().is_empty(), "{:?}", capture.lines());
    cms.create(
        &PostParams::default(),
        &configmap(
            "modules",
            LISTENERS,
            &[("counter.wasm", guest_bytes("versioned-v1"))],
        ),
    )
    .await
    .unwrap();
    body_until(&host, "/readyz", "ready once the ConfigMap exists", |b| {
        b == "ok: leader\n"
    })
    .await;
    // ... and covered by the catch-up create the listener gets when it joins.
    host.wait_for(
        Duration::from_secs(60),
        "the catch-up create of early",
        |seen| seen.iter().any(|d| early(d) && !d.report.calls.is_empty()),
    )
    .await;
    let seen = host.stop().await;
    let delivered: Vec<_> = seen
        .iter()
        .filter(|d| early(d))
        .map(|d| {
            let calls: Vec<_> = d
                .report
                .calls
                .iter()
                .map(|c| (c.listener.to_string(), c.export.as_str(), c.outcome.label()))
                .collect();
            (d.event.kind, d.event.initial, calls)
        })
        .collect();
    assert_eq!(
        delivered,
        [
            (EventKind::Create, false, vec![]),
            (
                EventKind::Create,
                true,
                vec![("counter".to_string(), "create", "ok")]
            ),
        ],
        "{}",
        harness::describe(&seen)
    );
    let handled: Vec<_> = lines(&capture)
        .into_iter()
        .filter(|l| l.1 == "early")
        .map(|l| (l.0, l.3))
        .collect();
    assert_eq!(handled, [("v1".to_string(), 1)]);
    t.ns.delete().await;
}

/// An update whose listener set would leave the watch with no listener is rejected as a whole,
/// as a --config file without listeners is; the running listener keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_leaves_a_watch_without_listeners_is_rejected() {
    let s = setup(guest_bytes("versioned-v1")).await;
    assert_eq!(handled(&s, "before").await, ("v1".into(), 1));
    push(&s.cms, "listeners: []\n", &[]).await;
    eventually("the empty listener set to be rejected", || {
        s.host.rejection("*").is_some_and(|r| {
            r.error.starts_with(
                "listeners.yaml gives watch \"things\" no listener: every watch needs at least one",
            )
        })
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.t.client.clone(), s.t.ns.name());
    wait_for_note(
        &events,
        "ListenersRejected",
        "a ListenersRejected Event naming the watch",
        |n| n.contains("no listener"),
    )
    .await;
    // The instance that ran before keeps serving: its count goes on.
    assert_eq!(handled(&s, "after").await, ("v1".into(), 2));
    assert_eq!(
        s.host.get("/readyz").await,
        (200, "ok: leader\n".to_string())
    );
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// A module given as a file path that is not there yet (a volume mounted after the update) is
/// rejected, then loaded once the file appears, with no change of the ConfigMap.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_file_that_appears_later_is_loaded_without_a_configmap_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter.wasm");
    // Beside it, a module that never loads: the re-apply does not report it a second time.
    let listeners = format!(
        "{}  - name: broken\n    module: broken.wasm\n",
        LISTENERS.replace("counter.wasm", &file.display().to_string())
    );
    let t = Things::new().await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), t.ns.name());
    cms.create(
        &PostParams::default(),
        &configmap(
            "modules",
            &listeners,
            &[("broken.wasm", b"not wasm".to_vec())],
        ),
    )
    .await
    .unwrap();
    let s = host_for(t, cms).await;
    let (code, body) = s.host.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    let rejection = s.host.rejection("counter").expect("rejected: no such file");
    assert!(rejection.digest.is_none(), "{rejection:?}");
    let broken = s.host.rejection("broken").expect("rejected: not wasm");
    let broken_rejected =
        r#"kubelisten_listener_reloads_total{listener="broken",outcome="rejected"} 1"#;
    let (_, metrics) = s.host.get("/metrics").await;
    assert!(metrics.lines().any(|l| l == broken_rejected), "{metrics}");

    // The file appears (written elsewhere and renamed in, as a volume update would).
    let v1 = guest_bytes("versioned-v1");
    std::fs::write(dir.path().join(".counter.tmp"), &v1).unwrap();
    std::fs::rename(dir.path().join(".counter.tmp"), &file).unwrap();
    counter_runs(&s.host, &v1).await;
    body_until(&s.host, "/readyz", "only broken keeps it unready", |b| {
        b.contains("broken") && !b.contains("counter")
    })
    .await;
    assert!(s.host.rejection("counter").is_none());
    assert_eq!(s.host.rejection("broken"), Some(broken), "still on record");
    let (_, metrics) = s.host.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == broken_rejected),
        "broken's rejection counted once: {metrics}"
    );
    s.t.create("a", json!({}), &[]).await;
    let capture = s.capture.clone();
    eventually("v1 from the file to serve", || {
        lines(&capture).iter().any(|l| l.0 == "v1" && l.1 == "a")
    })
    .await;
    s.host.stop().await;
    s.t.ns.delete().await;
}

/// A standby compiles the ConfigMap's modules ahead of a takeover, without loading them.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_precompiles_the_configmaps_modules() {
    let t = Things::new().await;
    modules_configmap(&t, guest_bytes("versioned-v1")).await;
    let runtime = harness::runtime();
    let source = ModulesConfigMap {
        namespace: t.ns.name().into(),
        name: "modules".into(),
    };
    let compiled =
        kubelisten::hotswap::HotSwap::precompile(&runtime, &t.client, &source, Default::default())
            .await;
    assert_eq!(compiled, 1);
    assert_eq!(runtime.memory_cache_len(), 1);
    // Stopped (a takeover or a shutdown came first): nothing more is compiled.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fresh = harness::runtime();
    assert_eq!(
        kubelisten::hotswap::HotSwap::precompile(&fresh, &t.client, &source, stopped).await,
        0
    );
    assert_eq!(fresh.memory_cache_len(), 0);
    // A ConfigMap that is not there compiles nothing (its load reports it).
    let missing = ModulesConfigMap {
        namespace: t.ns.name().into(),
        name: "absent".into(),
    };
    assert_eq!(
        kubelisten::hotswap::HotSwap::precompile(&runtime, &t.client, &missing, Default::default())
            .await,
        0
    );
    t.ns.delete().await;
}

/// A listener's start code runs at load (the trial instantiation) with the grants of its own
/// ConfigMap entry: here it creates a ConfigMap as it starts, and traps if the policy denies
/// it. It is loaded, not rejected as a module that "cannot be instantiated".
#[tokio::test(flavor = "multi_thread")]
async fn start_code_runs_with_the_entrys_grants_at_load() {
    let t = Things::new().await;
    let ns = t.ns.name().to_string();
    let start = "(drop (call $cluster_ok)) \
        (if (i32.and (i32.eq (i32.load8_u (i32.const 32)) (i32.const 1)) \
                     (i32.eq (i32.load8_u (i32.const 36)) (i32.const 2))) \
          (then unreachable))";
    let module = support::wat_listener_creating(
        start,
        "",
        &format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"made-at-start","namespace":"{ns}"}}}}"#
        ),
    );
    let listeners = format!(
        "listeners:\n  - name: starter\n    module: starter.wasm\n    mode: reference\n    capabilities:\n      grants:\n        - {{apiGroups: [\"\"], resources: [configmaps], verbs: [create], namespaces: [{ns}]}}\n"
    );
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &configmap("modules", &listeners, &[("starter.wasm", module)]),
    )
    .await
    .unwrap();
    let (host, _runtime) = cluster_host(&t, Arc::new(Capture::default())).await;
    body_until(&host, "/readyz", "the starter listener to be loaded", |b| {
        b == "ok: leader\n"
    })
    .await;
    assert!(host.rejection("starter").is_none());
    cms.get("made-at-start")
        .await
        .expect("the start code's ConfigMap");
    host.stop().await;
    t.ns.delete().await;
}

/// The cluster calls of `listener` its policy denied so far, per `/metrics`.
async fn denials(host: &TestHost, listener: &str) -> u64 {
    let (_, metrics) = host.get("/metrics").await;
    let series = format!("kubelisten_cluster_calls_denied_total{{listener=\"{listener}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// A new version of a running listener is tried at load with the grants of its new entry (its
/// start code creates a ConfigMap), while the running version keeps its own until the swap:
/// a rejected version changes nothing the running one may do. The instance tried at load, kept
/// to serve events, has the grants of the listener's name from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_listeners_start_code_runs_with_its_new_entrys_grants_at_load() {
    let t = Things::new().await;
    let ns = t.ns.name().to_string();
    let configmap_json = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"{ns}"}}}}"#
        )
    };
    let entry = |grants: &str| {
        format!(
            "listeners:\n  - name: starter\n    module: starter.wasm\n    mode: reference\n{grants}"
        )
    };
    let granted = entry(&format!(
        "    capabilities:\n      grants:\n        - {{apiGroups: [\"\"], resources: [configmaps], verbs: [create], namespaces: [{ns}]}}\n"
    ));
    // Running: no grants; each event's call tries to create a ConfigMap.
    let v1 = support::wat_listener_creating(
        "",
        "(drop (call $cluster_ok))",
        &configmap_json("made-by-v1"),
    );
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &configmap("modules", &entry(""), &[("starter.wasm", v1)]),
    )
    .await
    .unwrap();
    let (mut host, _runtime) = cluster_host(&t, Arc::new(Capture::default())).await;
    body_until(&host, "/readyz", "the starter listener to be loaded", |b| {
        b == "ok: leader\n"
    })
    .await;

    // A version whose start code creates a ConfigMap, then traps: rejected, having run with
    // the new entry's grants ...
    let trapping = support::wat_listener_creating(
        "(drop (call $cluster_ok)) unreachable",
        "",
        &configmap_json("tried-at-start"),
    );
    push(&cms, &granted, &[("starter.wasm", trapping)]).await;
    eventually("the trapping version to be rejected", || {
        host.rejection("starter")
            .is_some_and(|r| r.error.contains("cannot be instantiated"))
    })
    .await;
    cms.get("tried-at-start")
        .await
        .expect("the rejected version's start code ran with its entry's grants");
    // ... while the running version kept its own: none.
    t.create("a", json!({}), &[]).await;
    host.wait_for(Duration::from_secs(60), "the event of a", |seen| {
        seen.iter()
            .any(|d| d.event.meta.name == "a" && d.report.succeeded())
    })
    .await;
    assert!(cms.get_opt("made-by-v1").await.unwrap().is_none());

    // A version whose start code traps unless its create is allowed: loaded.
    let start = "(drop (call $cluster_ok)) \
        (if (i32.and (i32.eq (i32.load8_u (i32.const 32)) (i32.const 1)) \
                     (i32.eq (i32.load8_u (i32.const 36)) (i32.const 2))) \
          (then unreachable))";
    let v2 = support::wat_listener_creating(
        start,
        "(drop (call $cluster_ok))",
        &configmap_json("made-at-start"),
    );
    push(&cms, &granted, &[("starter.wasm", v2.clone())]).await;
    runs(&host, "starter", &v2).await;
    assert!(host.rejection("starter").is_none());
    cms.get("made-at-start")
        .await
        .expect("the start code's ConfigMap");

    // The grant taken away (the same module: its instance tried at load is kept): its first
    // event's create is denied.
    let swaps = || *host.chain(0).swaps().borrow();
    let before = swaps();
    push(&cms, &entry(""), &[("starter.wasm", v2)]).await;
    eventually("the grant change to apply", || swaps() > before).await;
    let denied = denials(&host, "starter").await;
    t.create("b", json!({}), &[]).await;
    host.wait_for(Duration::from_secs(60), "the event of b", |seen| {
        seen.iter()
            .any(|d| d.event.meta.name == "b" && d.report.succeeded())
    })
    .await;
    assert_eq!(denials(&host, "starter").await, denied + 1);
    host.stop().await;
    t.ns.delete().await;
}
