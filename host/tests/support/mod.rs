//! Shared helpers of the sandbox tests (no cluster): guest paths, a capturing log sink, events.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kubelisten::event::{EventKind, ObjectMeta, ResourceEvent};
use kubelisten::runtime::{GuestLogSink, LogLevel, Runtime, RuntimeConfig};

/// Path of a guest built by `make guests`; panics with the build command when missing.
pub fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} is not built: run `make guests` (missing {})",
        path.display()
    );
    path
}

/// One captured guest log line.
#[derive(Debug, Clone)]
pub struct Line {
    pub listener: String,
    pub object: String,
    pub event_kind: String,
    pub level: LogLevel,
    pub message: String,
}

/// A sink that keeps every line.
#[derive(Default)]
pub struct Capture(pub Mutex<Vec<Line>>);

impl Capture {
    pub fn lines(&self) -> Vec<Line> {
        self.0.lock().unwrap().clone()
    }

    pub fn messages_of(&self, listener: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.listener == listener)
            .map(|l| l.message)
            .collect()
    }
}

impl GuestLogSink for Capture {
    fn log(&self, listener: &str, object: &str, event_kind: &str, level: LogLevel, message: &str) {
        self.0.lock().unwrap().push(Line {
            listener: listener.into(),
            object: object.into(),
            event_kind: event_kind.into(),
            level,
            message: message.into(),
        });
    }
}

/// A runtime whose guest logs go to a fresh [`Capture`], with its own code cache directory.
pub fn runtime() -> (Runtime, Arc<Capture>, tempfile::TempDir) {
    let capture = Arc::new(Capture::default());
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: capture.clone(),
        ..RuntimeConfig::default()
    })
    .unwrap();
    (runtime, capture, cache)
}

/// Like [`runtime`] with an instance pool of `pool_instances` component instances.
pub fn runtime_with_pool(pool_instances: u32) -> (Runtime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        sink: Arc::new(Capture::default()),
        pool_instances,
        ..RuntimeConfig::default()
    })
    .unwrap();
    (runtime, cache)
}

/// A `create` event for `name` with an optional `kubelisten.dev/fault` annotation.
pub fn event(kind: EventKind, name: &str, fault: Option<&str>) -> ResourceEvent {
    let annotations = fault.map_or_else(String::new, |f| {
        format!(r#","annotations":{{"kubelisten.dev/fault":"{f}"}}"#)
    });
    let raw = format!(
        r#"{{"apiVersion":"test.kubelisten.dev/v1","kind":"Thing","metadata":{{"name":"{name}","namespace":"ns","uid":"uid-{name}","resourceVersion":"1","generation":1{annotations}}},"spec":{{"replicas":1}}}}"#
    );
    let meta = ObjectMeta::from_json(&raw).unwrap();
    ResourceEvent::new(kind, Arc::from(raw), meta, Default::default())
}
