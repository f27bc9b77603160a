//! `/readyz` follows the API server: stopping the kube-apiserver makes the host unready, and
//! starting it again makes it ready again without a restart of the host.

mod common;
mod harness;

use std::time::Duration;

use harness::{crd_watch, listener, settings, write_crd, TestHost, GROUP, KIND, PLURAL};
use http_body_util::BodyExt;
use kubelisten::runtime::Mode;
use tower::ServiceExt;

async fn readyz(host: &TestHost) -> (u16, String) {
    let response = kubelisten::server::router(host.server.clone())
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let code = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

async fn until(host: &TestHost, code: u16, what: &str) -> String {
    for _ in 0..600 {
        let (got, body) = readyz(host).await;
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
