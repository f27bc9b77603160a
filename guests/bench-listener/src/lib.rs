//! The end-to-end benchmark's listener (bench/e2e.sh): for every event it logs one line
//!
//! `BENCH <kind> <namespace>/<name> <resourceVersion> <unix-time-ns> uid=<uid>[ initial]`
//!
//! with the wall-clock time (WASI `wall-clock`, i.e. the host's CLOCK_REALTIME) at which the
//! listener saw the event. The trailing fields are for bench/reliability.py: the object's uid
//! (a re-created object of the same name is another object), and ` initial` when the event came
//! from an initial list or a relist (the event's `initial` flag), which tells a new leader's
//! replays from duplicates. The native baseline and the kopf handler print the line without
//! them; bench/driver.py reads both. Works in classname and reference mode (it keeps no state).

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
    let initial = if ev.initial { " initial" } else { "" };
    log(
        Level::Info,
        &format!(
            "BENCH {kind} {}/{} {} {now} uid={}{initial}",
            m.namespace.as_deref().unwrap_or("-"),
            m.name,
            m.resource_version,
            m.uid
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
