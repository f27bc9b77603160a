//! `/readyz` follows the API server: stopping the kube-apiserver makes the host unready, and
//! starting it again makes it ready again without a restart of the host.

mod common;
mod harness;

use std::time::Duration;

use harness::{crd_watch, listener, settings, write_crd, TestHost, GROUP, KIND, PLURAL};
use kubelisten::runtime::Mode;

async fn until(host: &TestHost, code: u16, what: &str) -> String {
    for _ in 0..600 {
        let (got, body) = host.get("/readyz").await;
        if got == code {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {code} ({what})");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_api_server() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let crd = write_crd(dir.path(), GROUP, KIND, PLURAL);
    let config = crd_watch(
        &crd,
        ns.name(),
        vec![listener("rust-logger", Mode::Classname)],
    );
    let runtime = harness::runtime();
    let host = TestHost::start(client.clone(), &runtime, &config, &settings(2)).await;
    host.wait_synced().await;
    until(&host, 200, "after the first list").await;

    tokio::task::spawn_blocking(|| harness::cluster(&["stop-apiserver"]))
        .await
        .unwrap();
    let body = until(&host, 503, "with the API server stopped").await;
    assert!(body.contains("disconnected"), "{body}");

    tokio::task::spawn_blocking(|| harness::cluster(&["start-apiserver"]))
        .await
        .unwrap();
    let body = until(&host, 200, "after the API server came back").await;
    assert_eq!(body, "ok: leader\n");
    host.stop().await;
    ns.delete().await;
}
