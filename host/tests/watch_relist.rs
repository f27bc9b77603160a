//! A gap in the watch that forces a relist: only the host's connection is cut (through a TCP
//! proxy), objects are created, changed and deleted meanwhile, etcd is compacted so the host's
//! resourceVersion expires, then the connection is restored. The host must relist and deliver
//! the missed creates, updates and deletes exactly once, and an object deleted and created
//! again under the same name as the old object's delete before the new object's create.
//!
//! The resource `gaps.relist.kubelisten.dev` has the API server's watch cache turned off
//! (`--watch-cache-sizes` in deploy/local/cluster.sh), so an expired resourceVersion reaches the
//! host as `410 Expired` as it would after a long disconnection from a busy cluster.

mod common;
mod harness;

use std::time::Duration;

use futures::StreamExt;

use harness::{delete, listener, patch_spec, proxied_client, settings, TestHost, Things};
use kubelisten::event::EventKind;
use kubelisten::runtime::Mode;
use serde_json::json;

const GROUP: &str = "relist.kubelisten.dev";
const KIND: &str = "Gap";
const PLURAL: &str = "gaps";

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_with_an_expired_resource_version_is_healed_by_a_relist() {
    let t = Things::for_crd(GROUP, KIND, PLURAL).await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    for name in [
        "keep-1", "keep-2", "change-1", "change-2", "delete-1", "delete-2", "recreate",
    ] {
        t.create(name, json!({"v": 0}), &[]).await;
    }

    // The host talks to the API server only through the proxy.
    let (proxy, host_client) = proxied_client().await;
    let config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    let runtime = harness::runtime();
    let mut host = TestHost::start(host_client, &runtime, &config, &settings(4)).await;
    host.wait_for(Duration::from_secs(60), "seven initial creates", |seen| {
        seen.len() >= 7
    })
    .await;
    host.wait_synced().await;

    proxy.cut();
    for name in ["change-1", "change-2"] {
        patch_spec(&t.api, name, json!({"v": 1})).await;
    }
    for name in ["delete-1", "delete-2"] {
        delete(&t.api, name).await;
    }
    for name in ["new-1", "new-2"] {
        t.create(name, json!({"v": 0}), &[]).await;
    }
    // The same name, another object: no finalizers, so the delete is immediate.
    delete(&t.api, "recreate").await;
    t.create("recreate", json!({"v": 2}), &[]).await;
    let revision = harness::compact_etcd();
    eprintln!("etcd compacted at revision {revision}");
    proxy.restore();

    host.wait_for(Duration::from_secs(120), "the missed changes", |seen| {
        seen.len() >= 15
    })
    .await;
    // A later live change proves the watch is past the relist; nothing else may arrive before it.
    t.create("sentinel", json!({}), &[]).await;
    host.wait_for(Duration::from_secs(60), "the sentinel", |seen| {
        seen.iter().any(|d| d.event.meta.name == "sentinel")
    })
    .await;
    let seen = host.stop().await;
    let log = harness::describe(&seen);

    let after_gap: Vec<(EventKind, &str, bool)> = seen[7..]
        .iter()
        .map(|d| (d.event.kind, d.event.meta.name.as_str(), d.event.initial))
        .collect();
    let mut missed: Vec<(EventKind, &str, bool)> = after_gap[..after_gap.len() - 1].to_vec();
    missed.sort_by_key(|(k, n, _)| (k.as_str(), *n));
    assert_eq!(
        missed,
        [
            (EventKind::Create, "new-1", true),
            (EventKind::Create, "new-2", true),
            (EventKind::Create, "recreate", true),
            (EventKind::Delete, "delete-1", true),
            (EventKind::Delete, "delete-2", true),
            (EventKind::Delete, "recreate", true),
            (EventKind::Update, "change-1", true),
            (EventKind::Update, "change-2", true),
        ],
        "each missed change exactly once, from the relist:\n{log}"
    );
    assert_eq!(
        after_gap.last(),
        Some(&(EventKind::Create, "sentinel", false)),
        "{log}"
    );
    // The re-created name: the old object's delete first, then the new object's create.
    let recreate: Vec<(EventKind, &str)> = seen
        .iter()
        .filter(|d| d.event.meta.name == "recreate")
        .map(|d| (d.event.kind, d.event.meta.uid.as_str()))
        .collect();
    let old_uid = recreate[0].1;
    let new_uid = recreate
        .iter()
        .map(|(_, uid)| *uid)
        .find(|uid| *uid != old_uid)
        .expect("an event of the new object");
    assert_eq!(
        recreate,
        [
            (EventKind::Create, old_uid),
            (EventKind::Delete, old_uid),
            (EventKind::Create, new_uid),
        ],
        "a re-created name: the old object's delete before the new object's create:\n{log}"
    );
    for d in &seen {
        match (d.event.kind, d.event.meta.name.as_str()) {
            (EventKind::Update, _) => {
                let old: serde_json::Value =
                    serde_json::from_str(d.event.old_object.as_deref().unwrap()).unwrap();
                assert_eq!(
                    old["spec"]["v"], 0,
                    "update carries the state before the gap"
                );
            }
            (EventKind::Delete, _) => {
                let last: serde_json::Value = serde_json::from_str(&d.event.object).unwrap();
                assert_eq!(
                    last["metadata"]["name"],
                    d.event.meta.name.as_str(),
                    "delete carries the last known state"
                );
            }
            _ => {}
        }
    }
    t.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_whose_connection_goes_silent_is_reopened() {
    let t = Things::for_crd(GROUP, KIND, PLURAL).await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    t.create("before", json!({}), &[]).await;
    let (proxy, host_client) = proxied_client().await;
    let config = t.watch(vec![listener("rust-logger", Mode::Classname)]);
    let runtime = harness::runtime();
    // The server ends each watch after 2 s and sends bookmarks meanwhile; one silent for 7 s
    // (2 s + the 5 s margin) has lost its peer.
    let mut run = settings(4);
    run.watch_timeout = Duration::from_secs(2);
    let mut host = TestHost::start(host_client, &runtime, &config, &run).await;
    host.wait_for(Duration::from_secs(60), "the first create", |seen| {
        seen.iter().any(|d| d.event.meta.name == "before")
    })
    .await;
    host.wait_synced().await;
    // The watch's connection (and any other open one) goes quiet: no data, no end. Without a
    // bound on the watch, the host waits on it for good.
    proxy.silence();
    t.create("after", json!({}), &[]).await;
    host.wait_for(
        Duration::from_secs(120),
        "the create made while silent",
        |seen| seen.iter().any(|d| d.event.meta.name == "after"),
    )
    .await;
    let seen = host.stop().await;
    let names: Vec<(EventKind, &str)> = seen
        .iter()
        .map(|d| (d.event.kind, d.event.meta.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [(EventKind::Create, "before"), (EventKind::Create, "after")],
        "{}",
        harness::describe(&seen)
    );
    t.ns.delete().await;
}

/// A graceful stop under back-pressure still handles the deletes a relist found: the diff's
/// deletes that do not fit in the dispatcher's channel (256) and queue (1) are held by the
/// list/watch task when the stop comes, and are sent and handled before the stop returns (they
/// were dropped: those objects are no longer listed, so the next start would not see them).
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_under_back_pressure_handles_the_deletes_a_relist_found() {
    const OBJECTS: usize = 300;
    let t = Things::for_crd(GROUP, KIND, PLURAL).await;
    common::apply_crd_yaml(&t.client, &harness::crd_yaml(GROUP, KIND, PLURAL)).await;
    let name = |i: usize| format!("obj-{i}");
    // Each call naps 20 ms (the annotation is on the deleted object too).
    futures::stream::iter(0..OBJECTS)
        .for_each_concurrent(16, |i| {
            let t = &t;
            async move {
                t.create(&name(i), json!({}), &[("kubelisten.dev/fault", "nap")])
                    .await;
            }
        })
        .await;
    let (proxy, host_client) = proxied_client().await;
    let config = t.watch(vec![listener("faulty", Mode::Reference)]);
    let runtime = harness::runtime();
    let mut run = settings(1);
    run.dispatch.queue_capacity = 1;
    run.shutdown_grace = Duration::from_secs(120);
    let mut host = TestHost::start(host_client, &runtime, &config, &run).await;
    host.wait_for(Duration::from_secs(120), "every initial create", |seen| {
        seen.len() >= OBJECTS
    })
    .await;
    host.wait_synced().await;

    // Every object is deleted during a gap that expires the host's resourceVersion: its relist
    // finds 300 deletes.
    proxy.cut();
    futures::stream::iter(0..OBJECTS)
        .for_each_concurrent(16, |i| {
            let t = &t;
            async move { delete(&t.api, &name(i)).await }
        })
        .await;
    harness::compact_etcd();
    proxy.restore();
    host.wait_for(Duration::from_secs(120), "the first delete", |seen| {
        seen.iter().any(|d| d.event.kind == EventKind::Delete)
    })
    .await;
    let seen = host.stop().await;
    let mut deleted: Vec<&str> = seen
        .iter()
        .filter(|d| d.event.kind == EventKind::Delete && d.report.succeeded())
        .map(|d| d.event.meta.name.as_str())
        .collect();
    deleted.sort_unstable();
    deleted.dedup();
    assert_eq!(
        deleted.len(),
        OBJECTS,
        "every delete the relist found was handled"
    );
    t.ns.delete().await;
}
