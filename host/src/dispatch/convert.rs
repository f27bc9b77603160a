//! Host event model → WIT records, built once per event and shared by every listener call.

use crate::event::{EventKind, ResourceEvent, WatchErrorInfo};
use crate::runtime::bindings::kubelisten::listener::types;
use crate::runtime::bindings::{Event, WatchError};
use crate::status::Status;

/// The WIT `event` record for `event`.
pub fn event(event: &ResourceEvent) -> Event {
    let m = &event.meta;
    Event {
        kind: match event.kind {
            EventKind::Create => types::EventKind::Create,
            EventKind::Update => types::EventKind::Update,
            EventKind::Delete => types::EventKind::Delete,
        },
        object: event.object.to_string(),
        old_object: event.old_object.as_deref().map(str::to_string),
        meta: types::ObjectMeta {
            api_version: m.api_version.clone(),
            kind: m.kind.clone(),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            generation: m.generation,
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
        },
        initial: event.initial,
        status: types::ObjectStatus {
            status: status(event.status.status),
            message: event.status.message.clone(),
        },
    }
}

fn status(status: Status) -> types::Status {
    match status {
        Status::InProgress => types::Status::InProgress,
        Status::Failed => types::Status::Failed,
        Status::Current => types::Status::Current,
        Status::Terminating => types::Status::Terminating,
        Status::NotFound => types::Status::NotFound,
        Status::Unknown => types::Status::Unknown,
    }
}

/// The WIT `watch-error` for `error`.
pub(crate) fn watch_error(error: &WatchErrorInfo) -> WatchError {
    WatchError {
        code: error.code,
        reason: error.reason.clone(),
        message: error.message.clone(),
    }
}
