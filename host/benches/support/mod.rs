//! Helpers shared by the benchmarks: guest paths, one-listener chains and update events.

use std::path::PathBuf;
use std::sync::Arc;

use kubelisten::dispatch::Chain;
use kubelisten::event::{EventKind, ObjectMeta, ResourceEvent};
use kubelisten::runtime::{Limits, Listener, ListenerSpec, Mode, Runtime};

/// Where `make guests` puts the guest `name`.
pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"))
}

/// The guest `name`, which must be built.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_path(name);
    assert!(
        path.exists(),
        "guest {name} is not built: run `make guests`"
    );
    path
}

/// A one-listener chain of the guest at `path`.
pub fn chain(runtime: &Runtime, name: &str, path: PathBuf, mode: Mode, limits: Limits) -> Chain {
    let spec = ListenerSpec {
        name: name.into(),
        path,
        mode,
        limits,
        capabilities: Default::default(),
    };
    Chain::new(vec![Arc::new(
        Listener::load(runtime, &spec).expect("listener"),
    )])
}

/// An update event carrying `raw` and, as every live update does, the previous object: `raw`
/// at an earlier resourceVersion (the same size).
pub fn update_event(raw: &str) -> ResourceEvent {
    let mut previous: serde_json::Value = serde_json::from_str(raw).expect("object");
    previous["metadata"]["resourceVersion"] = "1".into();
    ResourceEvent {
        old_object: Some(Arc::from(previous.to_string())),
        ..ResourceEvent::new(
            EventKind::Update,
            Arc::from(raw),
            ObjectMeta::from_json(raw).expect("object"),
            Default::default(),
        )
    }
}
