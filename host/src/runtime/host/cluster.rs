//! `kubelisten:listener/cluster`: the guest's Kubernetes API access, delegated to a
//! [`ClusterAccess`] implementation (the `capabilities` module) so the runtime stays kube-free.
//!
//! Calls block the guest's thread (guests run on blocking threads); the time spent in them does
//! not count against the guest's own call deadline.

use std::sync::Arc;

use crate::event::ObjectMeta;

use crate::runtime::bindings::kubelisten::listener::cluster::{
    ApiError, EventType, ListOptions, ObjectRef, PatchType,
};

/// One request a guest makes.
#[derive(Debug, Clone)]
pub enum ClusterRequest {
    /// `get`
    Get(ObjectRef),
    /// `list` and `list-page`
    List {
        /// apiVersion of the kind.
        api_version: String,
        /// The kind.
        kind: String,
        /// Namespace, or all.
        namespace: Option<String>,
        /// Selectors and limit.
        options: ListOptions,
        /// The previous page's `metadata.continue` (`list-page`); `None` for the first page.
        continue_from: Option<String>,
    },
    /// `create` (object JSON)
    Create(String),
    /// `apply` (object JSON)
    Apply(String),
    /// `patch`
    Patch(ObjectRef, PatchType, String),
    /// `patch-status`
    PatchStatus(ObjectRef, PatchType, String),
    /// `delete`
    Delete(ObjectRef),
    /// `record-event`
    RecordEvent {
        /// The involved object.
        about: ObjectRef,
        /// Normal or Warning.
        kind: EventType,
        /// Machine-readable reason.
        reason: String,
        /// Human-readable message.
        message: String,
    },
}

/// Who is calling: the listener and the event it is handling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The listener's name.
    pub listener: Arc<str>,
    /// Namespace of the event's object (for grants scoped to "the event object's namespace").
    pub event_namespace: Option<String>,
    /// The event's object (its metadata), when it has a uid (none for a watch error):
    /// `record-event` about it gets the uid ([`ObjectMeta::uid_of`]).
    pub event_object: Option<Arc<ObjectMeta>>,
    /// How long the guest's call may still run (its wall-clock cap): a request, rate-limit wait
    /// included, is cut there. `None`: no bound beyond the access's own timeout.
    pub time_left: Option<std::time::Duration>,
}

/// Serves guests' cluster calls: checks the listener's policy, rate-limits, performs the request.
pub trait ClusterAccess: Send + Sync {
    /// Performs `request` for `caller`; returns the response JSON (empty for delete/record-event).
    fn call(&self, caller: &Caller, request: ClusterRequest) -> Result<String, ApiError>;
}

/// The access of a runtime without a cluster (`replay`, `check`): every call is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCluster;

impl ClusterAccess for NoCluster {
    fn call(&self, caller: &Caller, _request: ClusterRequest) -> Result<String, ApiError> {
        Err(ApiError::ForbiddenByPolicy(format!(
            "listener {} has no cluster access here (offline run)",
            caller.listener
        )))
    }
}
