//! Kill and restart the kube-apiserver process while objects are updated and deleted:
//! afterwards every object's final state has been delivered and every deletion produced exactly
//! one `delete`; no event was delivered twice. An object deleted while the host cannot reach the
//! restarted server gets its `delete` from the relist, with its last known state.

mod common;
mod harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::{listener, proxied_client, settings, TestHost, Things};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kubelisten::event::EventKind;
use kubelisten::runtime::Mode;
use serde_json::json;

const GROUP: &str = "restart.kubelisten.dev";
const KIND: &str = "Survivor";
const PLURAL: &str = "survivors";
const OBJECTS: usize = 30;
/// The object deleted while the host cannot reach the restarted API server.
const VICTIM: &str = "victim";

/// Retries `op` until the API server answers (it is down for a while in this test; its
/// restart may take up to `cluster.sh`'s 120 s readiness wait, so this retries for 180 s).
async fn retry<T, F: std::future::Future<Output = Result<T, kube::Error>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> Option<T> {
    for _ in 0..1800 {
        match op().await {
            Ok(v) => return Some(v),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{what}: API server did not come back");
}

/// Deletes [`VICTIM`], retrying until the restarted API server serves the resource (for 180 s,
/// as [`retry`]).
async fn delete_victim(api: &kube::Api<DynamicObject>) {
    for _ in 0..1800 {
        match api.delete(VICTIM, &DeleteParams::default()).await {
            Ok(_) => return,
            // An attempt whose answer was lost did it.
            Err(kube::Error::Api(s))
                if s.code == 404 && s.message.contains("\"victim\" not found") =>
            {
                return
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("delete {VICTIM}: API server did not come back");
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_restart_loses_and_duplicates_nothing() {
    let t = Things::for_crd(GROUP, KIND, PLURAL).await;
    let config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    let runtime = harness::runtime();
    // The host reaches the API server through a proxy: it can be kept away from the restarted
    // server while an object is deleted.
    let (proxy, host_client) = proxied_client().await;
    let mut host = TestHost::start(host_client, &runtime, &config, &settings(4)).await;
    host.wait_synced().await;

    // Every object is created, and seen, before the outage: an object created and deleted
    // while nothing watches (the API server down, then its watch cache starting) is seen by no
    // watcher, and its deletion cannot be reported. Those the host knows must each get their
    // `delete`, from the watch or from the relist after the restart.
    let names = (0..OBJECTS)
        .map(|i| format!("obj-{i}"))
        .chain([VICTIM.to_string()]);
    for name in names {
        let obj = DynamicObject::new(&name, &t.ar).data(json!({"spec": {"round": 0}}));
        retry("create", || {
            let (api, obj) = (t.api.clone(), obj.clone());
            async move { api.create(&PostParams::default(), &obj).await }
        })
        .await;
    }
    host.wait_for(Duration::from_secs(60), "every create", |seen| {
        (0..OBJECTS)
            .map(|i| format!("obj-{i}"))
            .chain([VICTIM.to_string()])
            .all(|name| {
                seen.iter()
                    .any(|d| d.event.meta.name == name && d.event.kind == EventKind::Create)
            })
    })
    .await;
    let writer = {
        let api = t.api.clone();
        tokio::spawn(async move {
            let mut deleted = HashSet::new();
            for round in 1..4 {
                for i in 0..OBJECTS {
                    let name = format!("obj-{i}");
                    if deleted.contains(&name) {
                        continue;
                    }
                    if i % 5 == round {
                        retry("delete", || {
                            let (api, name) = (api.clone(), name.clone());
                            async move { api.delete(&name, &DeleteParams::default()).await }
                        })
                        .await;
                        deleted.insert(name);
                    } else {
                        let patch = Patch::Merge(json!({"spec": {"round": round}}));
                        retry("update", || {
                            let (api, name, patch) = (api.clone(), name.clone(), patch.clone());
                            async move { api.patch(&name, &PatchParams::default(), &patch).await }
                        })
                        .await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            deleted
        })
    };
    // Kill the API server while the writer runs, then start it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(|| harness::cluster(&["stop-apiserver"]))
        .await
        .unwrap();
    // The host's watch went down with the server; the proxy keeps it down until the victim is
    // deleted and etcd compacted past the delete. Its reconnection then finds its
    // resourceVersion expired (410: the restarted server's watch cache starts at a later
    // revision, and etcd has compacted it) and relists: only the relist can report the delete.
    proxy.cut();
    tokio::task::spawn_blocking(|| {
        std::thread::sleep(Duration::from_secs(3));
        harness::cluster(&["start-apiserver"]);
    })
    .await
    .unwrap();
    delete_victim(&t.api).await;
    tokio::task::spawn_blocking(harness::compact_etcd)
        .await
        .unwrap();
    proxy.restore();
    let deleted = writer.await.unwrap();

    let finals: HashMap<String, String> = retry("list", || {
        let api = t.api.clone();
        async move { api.list(&ListParams::default()).await }
    })
    .await
    .expect("the objects can be listed")
    .items
    .into_iter()
    .map(|o| {
        (
            o.metadata.name.unwrap(),
            o.metadata.resource_version.unwrap(),
        )
    })
    .collect();
    assert_eq!(finals.len() + deleted.len(), OBJECTS);
    host.wait_for(
        Duration::from_secs(180),
        "every final state and deletion",
        |seen| {
            finals.iter().all(|(name, rv)| {
                seen.iter()
                    .any(|d| d.event.meta.name == *name && d.event.meta.resource_version == *rv)
            }) && deleted.iter().chain([&VICTIM.to_string()]).all(|name| {
                seen.iter()
                    .any(|d| d.event.meta.name == *name && d.event.kind == EventKind::Delete)
            })
        },
    )
    .await;
    let seen = host.stop().await;
    let log = harness::describe(&seen);

    for name in &deleted {
        let deletes = seen
            .iter()
            .filter(|d| d.event.meta.name == *name && d.event.kind == EventKind::Delete)
            .count();
        assert_eq!(deletes, 1, "{name} deleted once:\n{log}");
    }
    // Created (live, or found by a relist if the watch of the new resource failed at first),
    // then deleted once, by the relist, with the state the host knew.
    let victim: Vec<_> = seen
        .iter()
        .filter(|d| d.event.meta.name == VICTIM)
        .map(|d| (d.event.kind, d.event.initial, &d.event.object))
        .collect();
    assert!(
        matches!(
            victim[..],
            [(EventKind::Create, _, created), (EventKind::Delete, true, last)] if created == last
        ),
        "{VICTIM}:\n{log}"
    );
    let mut delivered = HashSet::new();
    for d in seen.iter().filter(|d| d.attempt == 1) {
        let key = (
            d.event.meta.name.clone(),
            d.event.meta.resource_version.clone(),
            d.event.kind,
        );
        assert!(
            delivered.insert(key.clone()),
            "{key:?} delivered twice:\n{log}"
        );
    }
    t.ns.delete().await;
}
