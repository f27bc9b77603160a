//! The end-to-end benchmark's listener (bench/e2e.sh): for every event it logs one line
//!
//! `BENCH <kind> <namespace>/<name> <resourceVersion> <unix-time-ns>`
//!
//! with the wall-clock time (WASI `wall-clock`, i.e. the host's CLOCK_REALTIME) at which the
//! listener saw the event. The native baseline and the kopf handler print the same line.
//! Works in classname and reference mode (it keeps no state).

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::log::{log, Level};
use kubelisten::listener::types::EventKind;
use std::time::{SystemTime, UNIX_EPOCH};

fn seen(ev: &Event) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let kind = match ev.kind {
        EventKind::Create => "create",
        EventKind::Update => "update",
        EventKind::Delete => "delete",
    };
    let m = &ev.meta;
    log(
        Level::Info,
        &format!(
            "BENCH {kind} {}/{} {} {now}",
            m.namespace.as_deref().unwrap_or("-"),
            m.name,
            m.resource_version
        ),
    );
    Ok(())
}

struct BenchListener;

impl Guest for BenchListener {
    fn create(ev: Event) -> Result<(), String> {
        seen(&ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        seen(&ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        seen(&ev)
    }

    fn error(_err: WatchError) -> Result<(), String> {
        Ok(())
    }

    fn rollback(_ev: Event) {}
}

export!(BenchListener);
