//! Per-event dispatch cost, each guest in classname (fresh instance per event) and reference
//! (persistent instance) mode, beside a native Rust function doing the same work:
//!
//! - group `dispatch`: a no-op guest (pure overhead) and a Rust guest parsing a ~2 KiB object;
//! - group `polyglot`: the five `*-listener` guests (Rust, C, Go, JavaScript, Python; see
//!   `guests/README.md`) handling the same update of that object, whose status already records
//!   the guest's language: each logs the event, checks the status and logs that it is up to date
//!   (no cluster call). A polyglot guest that is not built is skipped with a message.
//!
//! Run with `make bench` (guests built first).

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kubelisten::event::ResourceEvent;
use kubelisten::runtime::{Limits, Mode, Runtime, RuntimeConfig, TracingSink};
use support::{chain, guest, guest_path, update_event};

/// A Deployment-like object of about 2 KiB (with a `kubectl apply` annotation, as most have).
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
            "annotations": {
                "deployment.kubernetes.io/revision": "7", "kubelisten.dev/owner": "bench",
                "kubectl.kubernetes.io/last-applied-configuration": format!(
                    r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"bench","namespace":"default"}},"spec":{{"replicas":3,"template":{{"spec":{{"containers":[{}]}}}}}}}}"#,
                    (0..3).map(|i| format!(r#"{{"name":"container-{i}","image":"registry.example.com/team/app-{i}:v1.2.{i}"}}"#)).collect::<Vec<_>>().join(",")
                )
            }
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

/// The polyglot reference behaviour natively (`guests/rust-listener` without the sandbox), on the
/// path the `polyglot` group exercises: log the event, find the status up to date, log that.
fn native_reference(event: &ResourceEvent, lang: &str, sink: &mut Vec<String>) {
    let meta = &event.meta;
    if let Some((_, fault)) = meta
        .annotations
        .iter()
        .find(|(k, _)| k == "kubelisten.dev/fault")
    {
        sink.push(format!("{lang}: fault {fault}"));
        return;
    }
    let name = match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name),
        None => meta.name.clone(),
    };
    sink.push(format!(
        "{lang}: {} {} {name} rv={}",
        event.kind.as_str(),
        meta.kind,
        meta.resource_version
    ));
    let up_to_date = meta.generation.is_some_and(|generation| {
        serde_json::from_str::<serde_json::Value>(&event.object).is_ok_and(|object| {
            object["status"]["handledBy"].as_str() == Some(lang)
                && object["status"]["observedGeneration"].as_i64() == Some(generation)
        })
    });
    if up_to_date {
        sink.push(format!("{lang}: status already up to date"));
    } else {
        sink.push(format!("{lang}: would patch the status"));
    }
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
    let event = update_event(&raw);

    let mut group = c.benchmark_group("dispatch");
    for guest_name in ["noop", "json-parse"] {
        for mode in [Mode::Classname, Mode::Reference] {
            let chain = chain(
                &runtime,
                guest_name,
                guest(guest_name),
                mode,
                Limits::default(),
            );
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

    let mut group = c.benchmark_group("polyglot");
    group.sample_size(20);
    let mut native_done = false;
    for (lang, guest_name) in [
        ("rust", "rust-listener"),
        ("c", "c-listener"),
        ("go", "go-listener"),
        ("js", "js-listener"),
        ("python", "python-listener"),
    ] {
        let path = guest_path(guest_name);
        if !path.exists() {
            eprintln!("polyglot: {guest_name} is not built (`make guests-polyglot`): skipped");
            continue;
        }
        let event = update_event(&polyglot_object(lang));
        for mode in [Mode::Classname, Mode::Reference] {
            let chain = chain(&runtime, guest_name, path.clone(), mode, Limits::default());
            assert!(chain.dispatch(&event).succeeded(), "{guest_name} failed");
            group.bench_with_input(BenchmarkId::new(lang, mode.as_str()), &event, |b, ev| {
                b.iter(|| chain.dispatch(ev))
            });
        }
        if !native_done {
            // The native work is the same for every language; measure it once.
            native_done = true;
            let mut sink = Vec::with_capacity(2);
            group.bench_with_input(BenchmarkId::new("native", lang), &event, |b, ev| {
                b.iter(|| {
                    native_reference(std::hint::black_box(ev), lang, &mut sink);
                    sink.clear();
                })
            });
        }
    }
    group.finish();
}

/// [`object`] with a status that already records `lang` for the object's generation, so a
/// polyglot listener handles its update without a cluster call.
fn polyglot_object(lang: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&object()).expect("object");
    value["status"]["handledBy"] = lang.into();
    value.to_string()
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(60);
    targets = bench
}
criterion_main!(benches);
