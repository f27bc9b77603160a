//! A guest's `create` body costs the host about its size, not a parse tree of it: the capability
//! gate reads the policy's fields without building a `serde_json::Value` (which costs tens of
//! times the text), so a listener cannot make the host allocate gigabytes from a body its own
//! memory limit allows. Its own test binary: it counts the heap's peak with a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kubelisten::capabilities::KubeCluster;
use kubelisten::runtime::bindings::kubelisten::listener::cluster::ApiError;
use kubelisten::runtime::{Caller, ClusterAccess, ClusterRequest};

/// The system allocator, keeping the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = IN_USE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An API server that serves core `v1` ConfigMaps (discovery) and answers every other request
/// with a small Status; it records the size of each request body.
fn fake_api(bodies: Arc<Mutex<Vec<usize>>>) -> Client {
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let bodies = bodies.clone();
        async move {
            let discovery = req.uri().path() == "/api/v1";
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            bodies.lock().unwrap().push(body);
            let answer = if discovery {
                serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1",
                    "resources": [{"name": "configmaps", "singularName": "configmap",
                        "namespaced": true, "kind": "ConfigMap", "verbs": ["create"]}]})
            } else {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Invalid", "code": 422, "message": "refused by the fake"})
            };
            let status = if discovery { 200 } else { 422 };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(kube::client::Body::from(answer.to_string().into_bytes()))
                    .unwrap(),
            )
        }
    });
    Client::new(service, "default")
}

#[test]
fn a_create_body_costs_the_host_about_its_size_and_an_oversized_one_is_refused_unread() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let grants = serde_saphyr::from_str(
        "grants:\n  - {apiGroups: [''], resources: [configmaps], verbs: [create]}\n",
    )
    .unwrap();
    let cluster = tokio.block_on(async {
        KubeCluster::new(
            fake_api(bodies.clone()),
            tokio::runtime::Handle::current(),
            [("l".to_string(), grants)],
            Duration::from_secs(30),
        )
        .unwrap()
    });
    let caller = Caller {
        listener: Arc::from("l"),
        event_namespace: Some("ns".into()),
        event_object: None,
        time_left: None,
    };
    // About 2 MiB of tiny array elements (each a 72-byte Value in a parse tree), or of tiny
    // members of `metadata` (each a key, a value and a map entry in a map of members).
    let array = |elements: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"x":[{}0]}}"#,
            "0,".repeat(elements)
        )
    };
    let members = |count: usize| {
        let members: String = (0..count).map(|i| format!(r#""{i:x}":0,"#)).collect();
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{{members}"name":"big"}}}}"#)
    };
    // Warm up (discovery, the client's first request), then measure each create from here.
    let _ = cluster.call(&caller, ClusterRequest::Create(array(1)));
    for body in [array(1 << 20), members(200_000)] {
        let before = IN_USE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let got = cluster.call(&caller, ClusterRequest::Create(body.clone()));
        let peak = PEAK.load(Ordering::Relaxed) - before;
        assert!(
            matches!(&got, Err(ApiError::Invalid(m)) if m.contains("refused by the fake")),
            "{got:?}"
        );
        let sent = *bodies.lock().unwrap().last().unwrap();
        assert!(sent >= body.len(), "the whole object was sent: {sent}");
        // The text itself, the body sent (with its namespace) and the client's buffers: a few
        // times the text. A parse tree would be about 36 times it (75 MB), a map of members
        // more than 10 times.
        assert!(
            peak < 6 * body.len(),
            "peak {peak} bytes for a {} byte body",
            body.len()
        );
    }

    // Over the API server's 3 MiB request limit: refused before anything reads it.
    let requests = bodies.lock().unwrap().len();
    let huge = array(2 << 20);
    match cluster.call(&caller, ClusterRequest::Create(huge)) {
        Err(ApiError::Invalid(m)) => assert!(m.contains("request limit of 3 MiB"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(bodies.lock().unwrap().len(), requests, "nothing was sent");
}
