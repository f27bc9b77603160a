//! Per-event dispatch cost: a no-op guest (pure overhead) and a guest parsing a ~2 KiB object,
//! each in classname (fresh instance per event) and reference (persistent instance) mode, beside
//! a native Rust function doing the same JSON work. Run with `make bench` (guests built first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kubelisten::dispatch::Chain;
use kubelisten::event::{EventKind, ObjectMeta, ResourceEvent};
use kubelisten::runtime::{
    Limits, Listener, ListenerSpec, Mode, Runtime, RuntimeConfig, TracingSink,
};

/// A Deployment-like object of about 2 KiB.
fn object() -> String {
    let containers: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({
                "name": format!("container-{i}"),
                "image": format!("registry.example.com/team/app-{i}:v1.2.{i}"),
                "ports": [{"containerPort": 8080 + i, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "production"}, {"name": "REGION", "value": "eu-west-1"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "bench", "namespace": "default", "uid": "0b6a5d4e-1c3f-4a43-9e1d-2f6c1a7b8c9d",
            "resourceVersion": "123456", "generation": 7,
            "labels": {"app": "bench", "tier": "backend", "team": "platform"},
            "annotations": {"deployment.kubernetes.io/revision": "7", "kubelisten.dev/owner": "bench"}
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": containers}}
        },
        "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "observedGeneration": 7}
    })
    .to_string()
}

/// The native baseline: the same work as the json-parse guest.
fn native_parse(object: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(object).map_err(|e| e.to_string())?;
    let replicas = value
        .pointer("/spec/replicas")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let containers = value
        .pointer("/spec/template/spec/containers")
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    if replicas < 0 || containers > 1_000 {
        return Err("implausible".into());
    }
    Ok(())
}

fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} is not built: run `make guests`"
    );
    path
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig {
        sink: Arc::new(TracingSink),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    eprintln!("allocator: {:?}", runtime.allocator());
    let raw = object();
    eprintln!("object size: {} bytes", raw.len());
    let event = ResourceEvent {
        kind: EventKind::Update,
        meta: ObjectMeta::from_json(&raw).expect("object"),
        object: Arc::from(raw.as_str()),
        old_object: None,
        initial: false,
        status: Default::default(),
    };

    let mut group = c.benchmark_group("dispatch");
    for guest_name in ["noop", "json-parse"] {
        for mode in [Mode::Classname, Mode::Reference] {
            let spec = ListenerSpec {
                name: guest_name.into(),
                path: guest(guest_name),
                mode,
                limits: Limits::default(),
                capabilities: Default::default(),
            };
            let chain = Chain::new(vec![Arc::new(
                Listener::load(&runtime, &spec).expect("listener"),
            )]);
            assert!(chain.dispatch(&event).succeeded());
            group.bench_with_input(
                BenchmarkId::new(guest_name, mode.as_str()),
                &event,
                |b, ev| b.iter(|| chain.dispatch(ev)),
            );
        }
    }
    group.bench_function("native/json-parse", |b| {
        b.iter(|| native_parse(std::hint::black_box(&raw)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(60);
    targets = bench
}
criterion_main!(benches);
