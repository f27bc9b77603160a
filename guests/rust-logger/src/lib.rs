//! Classname-mode listener that logs each event's kind, metadata and computed (kstatus) status.
//!
//! It also records itself in the per-event chain state under the key `rust-logger`, so later
//! listeners of the same chain can see that it ran.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::chain_state;
use kubelisten::listener::log::{log, Level};
use kubelisten::listener::types::{EventKind, Status};

fn describe(ev: &Event) -> String {
    let kind = match ev.kind {
        EventKind::Create => "create",
        EventKind::Update => "update",
        EventKind::Delete => "delete",
    };
    let m = &ev.meta;
    let status = match ev.status.status {
        Status::InProgress => "InProgress",
        Status::Failed => "Failed",
        Status::Current => "Current",
        Status::Terminating => "Terminating",
        Status::NotFound => "NotFound",
        Status::Unknown => "Unknown",
    };
    format!(
        "{kind} {}/{} {}/{} uid={} rv={} generation={} labels={} annotations={} initial={} has_old={} status={status} ({})",
        m.api_version,
        m.kind,
        m.namespace.as_deref().unwrap_or("-"),
        m.name,
        m.uid,
        m.resource_version,
        m.generation.map_or_else(|| "-".to_string(), |g| g.to_string()),
        m.labels.len(),
        m.annotations.len(),
        ev.initial,
        ev.old_object.is_some(),
        ev.status.message,
    )
}

fn handle(ev: Event) -> Result<(), String> {
    log(Level::Info, &describe(&ev));
    chain_state::set("rust-logger", &ev.meta.uid);
    Ok(())
}

struct Logger;

impl Guest for Logger {
    fn create(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn error(err: WatchError) -> Result<(), String> {
        log(
            Level::Warn,
            &format!("watch error {} {}: {}", err.code, err.reason, err.message),
        );
        Ok(())
    }

    fn rollback(ev: Event) {
        log(Level::Info, &format!("rollback {}", describe(&ev)));
    }
}

export!(Logger);
