//! Every language's guest against the local control plane, in both modes: it handles create,
//! update and delete of real custom resources and writes the same observable result (its
//! language in the object's status, through its capability grant); an error return is an
//! error, a trap is contained and the next event served. Also: a large guest loads from the
//! compiled-code cache on the second start.

mod common;
mod harness;

use std::time::Duration;

use harness::{delete, patch_spec, settings, Things};
use kube::api::{Api, DynamicObject};
use kubelisten::event::EventKind;
use kubelisten::runtime::{Mode, Runtime, RuntimeConfig};
use serde_json::json;

const GUESTS: [(&str, &str); 5] = [
    ("rust-listener", "rust"),
    ("python-listener", "python"),
    ("js-listener", "js"),
    ("c-listener", "c"),
    ("go-listener", "go"),
];

async fn handled_by(api: &Api<DynamicObject>, name: &str, generation: i64) -> serde_json::Value {
    for _ in 0..300 {
        let o = api.get(name).await.unwrap();
        let status = o.data.get("status").cloned().unwrap_or_default();
        if status["observedGeneration"] == generation {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name}: no status for generation {generation}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_language_in_both_modes_against_the_api_server() {
    let cache = tempfile::tempdir().unwrap();
    for (guest, lang) in GUESTS {
        for mode in [Mode::Classname, Mode::Reference] {
            let t = Things::new().await;
            let mut spec = harness::listener(guest, mode);
            spec.limits.call_timeout = Duration::from_secs(5);
            spec.capabilities = serde_saphyr::from_str(
                "grants:\n  - {apiGroups: [watch.kubelisten.dev], resources: [things/status], verbs: [patch]}\n",
            )
            .unwrap();
            let config = t.watch(vec![spec]);
            let runtime = Runtime::new(RuntimeConfig {
                cluster: kubelisten::app::cluster_access(&t.client, &config).unwrap(),
                cache_dir: Some(cache.path().to_path_buf()),
                ..RuntimeConfig::default()
            })
            .unwrap();
            let mut host = t.start_host(&runtime, &config, &settings(2)).await;
            let api = &t.api;

            t.create("ok", json!({"v": 1}), &[]).await;
            let status = handled_by(api, "ok", 1).await;
            assert_eq!(status["handledBy"], lang, "{guest} {mode:?}");
            patch_spec(api, "ok", json!({"v": 2})).await;
            let status = handled_by(api, "ok", 2).await;
            assert_eq!(
                status["handledBy"], lang,
                "{guest} {mode:?} after the update"
            );
            delete(api, "ok").await;

            t.create("refuses", json!({}), &[("kubelisten.dev/fault", "error")])
                .await;
            t.create("boom", json!({}), &[("kubelisten.dev/fault", "trap")])
                .await;
            t.create("after", json!({}), &[]).await;
            handled_by(api, "after", 1).await;
            host.wait_for(
                Duration::from_secs(120),
                "the delete and the faults",
                |seen| {
                    seen.iter().any(|d| d.event.kind == EventKind::Delete)
                        && seen
                            .iter()
                            .filter(|d| d.event.meta.name == "refuses")
                            .count()
                            >= 3
                        && seen.iter().filter(|d| d.event.meta.name == "boom").count() >= 3
                },
            )
            .await;
            let seen = host.stop().await;
            let outcome = |name: &str| {
                seen.iter()
                    .find(|d| d.event.meta.name == name)
                    .map(|d| d.report.calls[0].outcome.clone())
                    .unwrap()
            };
            let refused = outcome("refuses");
            assert_eq!(refused.label(), "error", "{guest} {mode:?}: {refused:?}");
            assert!(
                refused
                    .message()
                    .contains(&format!("{lang}: error requested")),
                "{refused:?}"
            );
            assert_eq!(outcome("boom").label(), "trap", "{guest} {mode:?}");
            assert!(
                seen.iter()
                    .any(|d| d.event.meta.name == "after" && d.report.succeeded()),
                "{guest} {mode:?}: next event served"
            );
            let deleted = seen
                .iter()
                .find(|d| d.event.kind == EventKind::Delete)
                .unwrap();
            assert!(deleted.report.succeeded(), "{guest} {mode:?}: delete");
            t.ns.delete().await;
        }
    }
}

#[test]
fn a_large_guest_loads_from_the_compiled_code_cache_on_the_second_start() {
    let cache = tempfile::tempdir().unwrap();
    let spec = harness::listener("python-listener", Mode::Classname);
    for (start, expected_hits) in [(1, 0), (2, 1)] {
        // A new runtime is a new process as far as the cache is concerned: only the disk is shared.
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        kubelisten::runtime::Listener::load(&runtime, &spec).unwrap();
        assert_eq!(runtime.cache_hits(), expected_hits, "start {start}");
    }
}
