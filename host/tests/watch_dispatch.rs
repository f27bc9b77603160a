//! Watch and dispatch against the local control plane: the skafos event model end to end.

mod common;
mod harness;

use std::collections::HashMap;
use std::time::Duration;

use futures::{stream, StreamExt};
use harness::{delete, listener, patch_spec, settings, TestHost, Things, GROUP, KIND, PLURAL};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kubelisten::config::{Config, TargetConfig, WatchConfig};
use kubelisten::event::EventKind;
use kubelisten::runtime::Mode;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn create_update_delete_reach_every_listener_in_both_modes() {
    let t = Things::new().await;
    let config = t.watch(vec![
        listener("rust-logger", Mode::Classname),
        listener("rust-metrics", Mode::Reference),
    ]);
    let runtime = harness::runtime();
    let mut host = t.start_host(&runtime, &config, &settings(4)).await;

    let created = t.create("one", json!({"size": 1}), &[]).await;
    let updated = patch_spec(&t.api, "one", json!({"size": 2})).await;
    delete(&t.api, "one").await;
    host.wait_for(WAIT, "create, update and delete of one", |seen| {
        seen.iter().any(|d| d.event.kind == EventKind::Delete)
    })
    .await;
    let seen = host.stop().await;

    let kinds: Vec<EventKind> = seen.iter().map(|d| d.event.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Create, EventKind::Update, EventKind::Delete],
        "{}",
        harness::describe(&seen)
    );
    for d in &seen {
        assert!(!d.event.initial, "live changes are not initial");
        assert!(d.report.succeeded());
        let listeners: Vec<&str> = d.report.calls.iter().map(|c| &*c.listener).collect();
        assert_eq!(listeners, ["rust-logger", "rust-metrics"]);
        let m = &d.event.meta;
        assert_eq!(
            (m.name.as_str(), m.namespace.as_deref()),
            ("one", Some(t.ns.name()))
        );
        assert_eq!(
            (m.api_version.as_str(), m.kind.as_str()),
            (format!("{GROUP}/v1").as_str(), KIND)
        );
        assert_eq!(Some(&m.uid), created.metadata.uid.as_ref());
        assert_eq!(
            m.generation,
            if d.event.kind == EventKind::Create {
                Some(1)
            } else {
                Some(2)
            }
        );
    }
    let update = &seen[1].event;
    assert_eq!(
        Some(&update.meta.resource_version),
        updated.metadata.resource_version.as_ref()
    );
    let old: serde_json::Value = serde_json::from_str(
        update
            .old_object
            .as_deref()
            .expect("update carries the old object"),
    )
    .unwrap();
    assert_eq!(old["spec"]["size"], 1);
    assert_eq!(
        old["metadata"]["resourceVersion"].as_str(),
        created.metadata.resource_version.as_deref()
    );
    let new: serde_json::Value = serde_json::from_str(&update.object).unwrap();
    assert_eq!(new["spec"]["size"], 2);
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_objects_arrive_as_initial_creates_at_every_start() {
    let t = Things::new().await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    for name in ["a", "b", "c"] {
        t.create(name, json!({"n": name}), &[]).await;
    }
    let config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    let runtime = harness::runtime();
    for round in 0..2 {
        let mut host = TestHost::start(t.client.clone(), &runtime, &config, &settings(4)).await;
        host.wait_for(WAIT, "three initial creates", |seen| seen.len() >= 3)
            .await;
        host.wait_synced().await;
        let seen = host.stop().await;
        let mut names: Vec<&str> = seen.iter().map(|d| d.event.meta.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["a", "b", "c"],
            "round {round}: {}",
            harness::describe(&seen)
        );
        assert!(
            seen.iter()
                .all(|d| d.event.kind == EventKind::Create && d.event.initial),
            "round {round}: {}",
            harness::describe(&seen)
        );
    }
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_object_order_is_kept_while_objects_run_in_parallel() {
    const OBJECTS: usize = 200;
    const UPDATES: usize = 5;
    let t = Things::new().await;
    let config = t.watch(vec![
        listener("json-parse", Mode::Classname),
        listener("rust-metrics", Mode::Reference),
    ]);
    let runtime = harness::runtime();
    let mut host = t.start_host(&runtime, &config, &settings(8)).await;

    stream::iter(0..OBJECTS)
        .for_each_concurrent(16, |i| {
            let t = &t;
            async move {
                let name = format!("obj-{i}");
                t.create(&name, json!({"step": 0}), &[]).await;
                for step in 1..=UPDATES {
                    patch_spec(&t.api, &name, json!({"step": step})).await;
                }
            }
        })
        .await;
    host.wait_for(WAIT, "every create and update", |seen| {
        seen.len() >= OBJECTS * (UPDATES + 1)
    })
    .await;
    let seen = host.stop().await;
    assert_eq!(
        seen.len(),
        OBJECTS * (UPDATES + 1),
        "no event lost or duplicated"
    );

    let mut per_object: HashMap<&str, Vec<i64>> = HashMap::new();
    for d in &seen {
        assert!(d.report.succeeded());
        let obj: serde_json::Value = serde_json::from_str(&d.event.object).unwrap();
        per_object
            .entry(d.event.meta.name.as_str())
            .or_default()
            .push(obj["spec"]["step"].as_i64().unwrap());
    }
    assert_eq!(per_object.len(), OBJECTS);
    for (name, steps) in &per_object {
        assert_eq!(
            steps,
            &(0..=UPDATES as i64).collect::<Vec<_>>(),
            "{name} out of order"
        );
    }
    // More than one object was in flight at once: some attempts overlap in time.
    let mut spans: Vec<_> = seen.iter().map(|d| (d.started, d.finished)).collect();
    spans.sort();
    let overlapping = spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
    assert!(
        overlapping > 0,
        "no two events were handled at the same time"
    );
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_listener_rolls_back_earlier_ones_and_retries_succeed() {
    let t = Things::new().await;
    let config = t.watch(vec![
        listener("rust-logger", Mode::Classname),
        listener("rust-metrics", Mode::Reference),
        listener("faulty", Mode::Reference),
    ]);
    let runtime = harness::runtime();
    let mut host = t.start_host(&runtime, &config, &settings(4)).await;
    t.create("refuses", json!({}), &[("kubelisten.dev/fault", "error")])
        .await;
    t.create("flaky", json!({}), &[("kubelisten.dev/fault", "flaky")])
        .await;
    host.wait_for(WAIT, "3 attempts on refuses and 2 on flaky", |seen| {
        seen.iter()
            .filter(|d| d.event.meta.name == "refuses")
            .count()
            == 3
            && seen
                .iter()
                .any(|d| d.event.meta.name == "flaky" && d.report.succeeded())
    })
    .await;
    let seen = host.stop().await;

    let refuses: Vec<_> = seen
        .iter()
        .filter(|d| d.event.meta.name == "refuses")
        .collect();
    assert_eq!(
        refuses.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for d in &refuses {
        let calls: Vec<(&str, &str, &str)> = d
            .report
            .calls
            .iter()
            .map(|c| (&*c.listener, c.export.as_str(), c.outcome.label()))
            .collect();
        assert_eq!(
            calls,
            [
                ("rust-logger", "create", "ok"),
                ("rust-metrics", "create", "ok"),
                ("faulty", "create", "error"),
                ("rust-metrics", "rollback", "ok"),
                ("rust-logger", "rollback", "ok"),
            ]
        );
    }
    let flaky: Vec<_> = seen
        .iter()
        .filter(|d| d.event.meta.name == "flaky")
        .collect();
    assert_eq!(
        flaky
            .iter()
            .map(|d| (d.attempt, d.report.succeeded()))
            .collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_core_kind_is_watched_without_a_crd_with_a_label_selector() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let config = Config {
        watches: vec![WatchConfig {
            name: "configmaps".into(),
            target: TargetConfig::Resource {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: None,
            },
            namespaces: vec![ns.name().to_string()],
            label_selector: Some("kubelisten.dev/watched=yes".into()),
            field_selector: None,
            listeners: vec![listener("rust-logger", Mode::Classname)],
        }],
    };
    let runtime = harness::runtime();
    let mut host = TestHost::start(client.clone(), &runtime, &config, &settings(2)).await;
    host.wait_synced().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    for (name, watched) in [("ignored", "no"), ("wanted", "yes")] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubelisten.dev/watched": watched}},
            "data": {"k": "v"}
        }))
        .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    host.wait_for(WAIT, "the labelled ConfigMap", |seen| {
        seen.iter().any(|d| d.event.meta.name == "wanted")
    })
    .await;
    let seen = host.stop().await;
    assert!(
        seen.iter().all(|d| d.event.meta.name == "wanted"),
        "{}",
        harness::describe(&seen)
    );
    let d = &seen[0];
    assert_eq!(
        (
            d.event.meta.api_version.as_str(),
            d.event.meta.kind.as_str()
        ),
        ("v1", "ConfigMap")
    );
    let object: serde_json::Value = serde_json::from_str(&d.event.object).unwrap();
    assert_eq!(object["data"]["k"], "v");
    ns.delete().await;
}

/// With `--log-format json`, the error that ends the process (here a listener whose module
/// file is missing, found while the watches are set up) is a JSON log line too: level ERROR,
/// the cause chain in `error`. Every line on stderr is JSON.
#[test]
fn the_error_that_ends_the_process_is_a_json_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    let config = dir.path().join("kubelisten.yaml");
    std::fs::write(
        &config,
        format!(
            "watches:\n  - name: cms\n    apiVersion: v1\n    kind: ConfigMap\n    namespaces: [default]\n    listeners: [{{name: gone, module: {}}}]\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args([
            "run",
            "--health-port",
            "0",
            "--status-bind",
            "off",
            "--config",
        ])
        .arg(&config)
        .env("KUBECONFIG", common::kubeconfig_path())
        .env("KUBELISTEN_LOG_FORMAT", "json")
        .env("KUBELISTEN_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a line that is not JSON ({err}): {line}\n{stderr}"))
        })
        .collect();
    let fatal = lines
        .iter()
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line:\n{stderr}"));
    let error = fatal["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("watch cms: loading listener gone")
            && error.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn malformed_crd_and_config_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad_crd = dir.path().join("bad-crd.yaml");
    std::fs::write(
        &bad_crd,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec: [not, a, map\n",
    )
    .unwrap();
    let module = harness::listener("rust-logger", Mode::Classname).path;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["run", "--crd"])
        .arg(&bad_crd)
        .arg("--listener")
        .arg(&module)
        .env("KUBECONFIG", common::kubeconfig_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad-crd.yaml"), "{stderr}");

    let bad_config = dir.path().join("kubelisten.yaml");
    std::fs::write(&bad_config, "watches:\n  - name: x\n    crd: crd.yaml\n    listeners:\n      - name: a\n        modul: a.wasm\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args(["run", "--config"])
        .arg(&bad_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kubelisten.yaml:6"), "{stderr}");
    assert!(stderr.contains("modul"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_joins_a_running_chain_gets_the_existing_objects() {
    let t = Things::new().await;
    let config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    let runtime = harness::runtime();
    let mut host = t.start_host(&runtime, &config, &settings(4)).await;
    t.create("before-a", json!({"size": 1}), &[]).await;
    t.create("before-b", json!({"size": 2}), &[]).await;
    host.wait_for(WAIT, "the creates before the swap", |seen| {
        seen.iter()
            .filter(|d| d.event.kind == EventKind::Create)
            .count()
            == 2
    })
    .await;

    // A hot swap adds rust-metrics next to the running rust-logger (same instance kept).
    let slot = host.chain(0);
    let logger = slot.get().listeners()[0].clone();
    let metrics = std::sync::Arc::new(
        kubelisten::Listener::load(&runtime, &listener("rust-metrics", Mode::Reference)).unwrap(),
    );
    slot.set(kubelisten::Chain::new(vec![logger, metrics]));
    host.wait_for(WAIT, "the catch-up creates of the new listener", |seen| {
        seen.iter().filter(|d| d.event.only.is_some()).count() == 2
    })
    .await;
    t.create("after", json!({"size": 3}), &[]).await;
    host.wait_for(WAIT, "the create of a new object", |seen| {
        seen.iter().any(|d| d.event.meta.name == "after")
    })
    .await;
    // The catch-up is counted apart from what the API server sent.
    let (_, metrics) = host.get("/metrics").await;
    for series in [
        r#"kubelisten_events_total{watch="things",kind="create"} 3"#,
        r#"kubelisten_catch_up_events_total{watch="things"} 2"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} missing in:\n{metrics}"
        );
    }
    let seen = host.stop().await;

    let calls_of = |listener: &str| -> Vec<String> {
        let mut names: Vec<String> = seen
            .iter()
            .filter(|d| d.report.calls.iter().any(|c| &*c.listener == listener))
            .map(|d| format!("{} {}", d.event.kind.as_str(), d.event.meta.name))
            .collect();
        names.sort();
        names
    };
    // The new listener learnt of both existing objects, then saw the new one; the old one was
    // not called again for objects it already had.
    assert_eq!(
        calls_of("rust-metrics"),
        ["create after", "create before-a", "create before-b"]
    );
    assert_eq!(
        calls_of("rust-logger"),
        ["create after", "create before-a", "create before-b"]
    );
    for d in seen.iter().filter(|d| d.event.only.is_some()) {
        assert!(
            d.event.initial && d.report.succeeded(),
            "{:?}",
            d.report.calls
        );
        assert_eq!(d.report.calls.len(), 1, "only the new listener is called");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_whose_kind_is_not_served_yet_waits_while_the_others_run() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::DeleteParams;

    let t = Things::new().await;
    // A second kind whose CRD another party installs only later.
    let late_group = format!("late-{}.kubelisten.dev", common::random_suffix());
    let mut config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    config.watches.push(WatchConfig {
        name: "late".into(),
        target: TargetConfig::Resource {
            group: late_group.clone(),
            version: "v1".into(),
            kind: "Late".into(),
            plural: None,
        },
        namespaces: vec![t.ns.name().to_string()],
        label_selector: None,
        field_selector: None,
        listeners: vec![listener("rust-metrics", Mode::Reference)],
    });
    let runtime = harness::runtime();
    // Before, an unserved kind failed the whole start.
    let mut host = TestHost::start(t.client.clone(), &runtime, &config, &settings(2)).await;

    // The other watch runs ...
    t.create("early", json!({"size": 1}), &[]).await;
    host.wait_for(WAIT, "the create of the watch that resolved", |seen| {
        seen.iter()
            .any(|d| d.event.meta.name == "early" && d.event.kind == EventKind::Create)
    })
    .await;
    // ... while the late one is named, with its reason, by /readyz, /status and /metrics.
    // (The other watch counts as synced once its first list has been handed on, which may
    // come just after its first event.)
    let (mut code, mut body) = host.get("/readyz").await;
    for _ in 0..300 {
        if !body.contains("watch things") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (code, body) = host.get("/readyz").await;
    }
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("watch late waits for its target (the API server does not serve"),
        "{body}"
    );
    assert!(!body.contains("watch things"), "{body}");
    let (_, status) = host.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let late = status["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "late")
        .expect("the late watch in /status")
        .clone();
    assert!(
        late["waitingForTarget"]
            .as_str()
            .is_some_and(|w| w.contains(&late_group)),
        "{late}"
    );
    assert_eq!(late["resource"], format!("{late_group}/v1/Late"), "{late}");
    let (_, metrics) = host.get("/metrics").await;
    assert!(
        metrics.contains("kubelisten_watch_waiting_for_target{watch=\"late\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubelisten_watch_waiting_for_target{watch=\"things\"} 0"),
        "{metrics}"
    );
    // /healthz stays ok: restarting would not serve the kind sooner.
    assert_eq!(host.get("/healthz").await.0, 200);

    // The CRD is installed; an object made right away reaches the late watch's listener
    // (as an initial create of its first list, or a create after it).
    let crd =
        common::apply_crd_yaml(&t.client, &harness::crd_yaml(&late_group, "Late", "lates")).await;
    let late_ar = harness::resource(&late_group, "Late", "lates");
    let late_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(t.client.clone(), t.ns.name(), &late_ar);
    harness::create_thing(&late_api, &late_ar, "first-late", json!({"size": 2}), &[]).await;
    host.wait_for(WAIT, "the late watch's create", |seen| {
        seen.iter().any(|d| {
            d.event.meta.name == "first-late"
                && d.event.kind == EventKind::Create
                && d.report.succeeded()
        })
    })
    .await;
    for _ in 0..300 {
        if host.get("/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(host.get("/readyz").await, (200, "ok: leader\n".to_string()));
    let (_, metrics) = host.get("/metrics").await;
    assert!(
        metrics.contains("kubelisten_watch_waiting_for_target{watch=\"late\"} 0"),
        "{metrics}"
    );
    // Both watches go on: an update of each arrives.
    patch_spec(&t.api, "early", json!({"size": 3})).await;
    patch_spec(&late_api, "first-late", json!({"size": 4})).await;
    host.wait_for(WAIT, "an update of each watch", |seen| {
        ["early", "first-late"].iter().all(|name| {
            seen.iter()
                .any(|d| d.event.meta.name == *name && d.event.kind == EventKind::Update)
        })
    })
    .await;

    host.stop().await;
    let crds = Api::<CustomResourceDefinition>::all(t.client.clone());
    if let Some(name) = crd.metadata.name.as_deref() {
        let _ = crds.delete(name, &DeleteParams::background()).await;
    }
    t.ns.delete().await;
}

/// A stop signal while a listener is being compiled at start ends `kubelisten run` at once,
/// with status 0: the compile runs off the async workers (which handle the signal), and the
/// exit does not wait for it. The compiler here never finishes (a script that sleeps).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_listener_compiles_at_start_exits_0() {
    /// How long each wait may take: a liveness bound, not a timing assertion.
    const BOUND: Duration = Duration::from_secs(60);
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let (compiler, started) = common::slow_compiler(dir.path());
    let config = dir.path().join("kubelisten.yaml");
    std::fs::write(
        &config,
        format!(
            "watches:\n  - name: cms\n    apiVersion: v1\n    kind: ConfigMap\n    namespaces: [{ns}]\n    listeners: [{{module: {}}}]\n",
            harness::listener("rust-logger", Mode::Classname).path.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubelisten"))
        .args([
            "run",
            "--health-port",
            "0",
            "--status-bind",
            "off",
            "--config",
        ])
        .arg(&config)
        .arg("--compiler")
        .arg(&compiler)
        .env("KUBECONFIG", common::kubeconfig_path())
        .env("KUBELISTEN_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let compiler_pid = common::compiler_started(&started, &mut child, BOUND, read_log).await;
    common::kill_process("-TERM", child.id());
    let status = common::exit_within(&mut child, BOUND).await;
    common::kill_process("-KILL", compiler_pid);
    let log = read_log();
    let status = status.unwrap_or_else(|| panic!("no exit within {BOUND:?} of SIGTERM:\n{log}"));
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("shutting down before the watches started"),
        "{log}"
    );
    ns.delete().await;
}
