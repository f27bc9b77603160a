//! `/healthz`, `/readyz` and `/metrics` of a host running in-process against the local control
//! plane, driven through the router (`oneshot`).

mod common;
mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{delete, listener, patch_spec, settings, TestHost, Things};
use kubelisten::runtime::Mode;
use serde_json::json;

async fn get(host: &TestHost, path: &str) -> (u16, String) {
    host.get(path).await
}

/// Parses Prometheus text exposition: `name{labels} value` per sample; panics on a bad line.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("kubelisten_"), "{line}");
        if let Some((_, labels)) = series.split_once('{') {
            assert!(labels.ends_with('}'), "{line}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_match_what_happened() {
    let t = Things::new().await;
    let config = t.watch(vec![
        listener("rust-logger", Mode::Classname),
        listener("faulty", Mode::Reference),
    ]);
    let runtime = harness::runtime();
    let mut host = t.start_host(&runtime, &config, &settings(4)).await;
    for _ in 0..600 {
        if get(&host, "/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&host, "/readyz").await,
        (200, "ok: leader\n".to_string())
    );
    assert_eq!(get(&host, "/healthz").await, (200, "ok\n".to_string()));

    for name in ["a", "b", "c"] {
        t.create(name, json!({}), &[]).await;
    }
    patch_spec(&t.api, "a", json!({"v": 2})).await;
    delete(&t.api, "b").await;
    t.create(
        "boom",
        json!({}),
        &[("kubelisten.dev/fault", "unreachable")],
    )
    .await;
    // "boom" traps on every attempt (3 attempts in the test settings).
    host.wait_for(Duration::from_secs(60), "every event", |seen| {
        seen.len() >= 8
    })
    .await;

    let (code, text) = get(&host, "/metrics").await;
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let sample = |s: &str| {
        m.get(s)
            .copied()
            .unwrap_or_else(|| panic!("missing {s} in\n{text}"))
    };
    assert_eq!(
        sample(r#"kubelisten_events_total{watch="things",kind="create"}"#),
        4.0
    );
    assert_eq!(
        sample(r#"kubelisten_events_total{watch="things",kind="update"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"kubelisten_events_total{watch="things",kind="delete"}"#),
        1.0
    );
    assert_eq!(
        sample(
            r#"kubelisten_listener_calls_total{listener="rust-logger",export="create",outcome="ok"}"#
        ),
        6.0,
        "3 creates + 3 attempts on boom"
    );
    assert_eq!(
        sample(
            r#"kubelisten_listener_calls_total{listener="faulty",export="create",outcome="trap"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            r#"kubelisten_listener_calls_total{listener="rust-logger",export="rollback",outcome="ok"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(r#"kubelisten_listener_traps_total{listener="faulty",trap="unreachable"}"#),
        3.0
    );
    assert_eq!(
        sample(r#"kubelisten_instance_rebuilds_total{listener="faulty"}"#),
        3.0
    );
    assert_eq!(
        sample(r#"kubelisten_listener_call_duration_seconds_count{listener="rust-logger"}"#),
        11.0
    );
    assert_eq!(sample("kubelisten_queue_depth{watch=\"things\"}"), 0.0);
    // a, c and boom are held (b was deleted); each is some hundred bytes of JSON.
    assert_eq!(sample(r#"kubelisten_watch_objects{watch="things"}"#), 3.0);
    let bytes = sample(r#"kubelisten_watch_object_bytes{watch="things"}"#);
    assert!((300.0..30_000.0).contains(&bytes), "{bytes}");
    assert!(
        m.keys().any(|k| k.starts_with(
            "kubelisten_listener_info{listener=\"faulty\",mode=\"reference\",digest=\"sha256:"
        )),
        "{text}"
    );

    let (code, status) = get(&host, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let objects = &status["watches"][0]["objects"];
    assert!(
        objects.get(format!("{}/a", t.ns.name())).is_some(),
        "{status}"
    );
    assert!(
        objects.get(format!("{}/b", t.ns.name())).is_none(),
        "deleted objects are forgotten: {status}"
    );

    // A dead watch task makes the process unhealthy.
    // (An aborted task is dropped when a worker thread gets to it.)
    host.kill_watch_tasks();
    let (mut code, mut body) = get(&host, "/healthz").await;
    for _ in 0..300 {
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (code, body) = get(&host, "/healthz").await;
    }
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("watch tasks died"), "{body}");
    host.stop().await;
    t.ns.delete().await;
}
