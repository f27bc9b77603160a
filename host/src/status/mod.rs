//! kstatus: the computed status of any Kubernetes object; entry points [`compute`],
//! [`compute_with_generated`], [`augment`], [`aggregate`] and (with a client) [`compute_live`].
//!
//! The rules are those of `../shared/spec/kstatus.md` (the `pkg/kstatus` package of
//! fluxcd/cli-utils): a generic pipeline (deletion, generation, `Reconciling`/`Stalled`,
//! type-specific rules, `Ready` fallback, default) computed from the object's own JSON.
//! Everything here except [`compute_live`]/[`fetch_generated`] and [`watcher`] is pure: no
//! I/O, and the clock is read only by the functions without an `_at` suffix.
//!
//! Files: `generic.rs` (the pipeline), `types.rs`, `pod.rs` and `workloads.rs` (the
//! type-specific rules), `conditions.rs` (reading `status.conditions`), `augment.rs` (writing
//! them back), `generated.rs` (controllers and their generated ReplicaSets/Pods),
//! `selector.rs` (label selectors), `aggregate.rs`, `live.rs` (reading generated objects from
//! the API server) and `watcher.rs` (the status watcher stream).

mod aggregate;
mod augment;
mod conditions;
mod fields;
mod generated;
mod generic;
mod live;
mod pod;
mod selector;
mod types;
pub mod watcher;
mod workloads;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use aggregate::aggregate;
pub use augment::{augment, augment_at};
pub use generated::{
    compute_with_generated, compute_with_generated_at, ObjectIdentity, ResourceStatus,
};
pub use generic::{compute, compute_at};
pub use live::{compute_live, fetch_generated, LiveError};
pub use selector::LabelSelector;
pub use watcher::{StatusStream, StatusWatcher, WatchEvent};

/// How long a Pod may stay unschedulable before it is reported as Failed (`PodUnschedulable`)
/// rather than InProgress (`PodNotScheduled`).
pub const SCHEDULE_WINDOW: Duration = Duration::from_secs(15);

/// The computed status of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// The object is being reconciled and has not reached its desired state yet.
    InProgress,
    /// The object's reconciliation failed or is stuck; it needs intervention.
    Failed,
    /// The object has reached its desired state.
    Current,
    /// The object is being deleted.
    Terminating,
    /// The object does not exist.
    NotFound,
    /// The status could not be computed (an error is attached where one is known).
    Unknown,
}

impl Status {
    /// All six statuses, in declaration order.
    pub const ALL: [Status; 6] = [
        Status::InProgress,
        Status::Failed,
        Status::Current,
        Status::Terminating,
        Status::NotFound,
        Status::Unknown,
    ];

    /// The status' name as kstatus spells it (`InProgress`, `Failed`, `Current`,
    /// `Terminating`, `NotFound`, `Unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "InProgress",
            Status::Failed => "Failed",
            Status::Current => "Current",
            Status::Terminating => "Terminating",
            Status::NotFound => "NotFound",
            Status::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the six status names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {0:?} (expected InProgress, Failed, Current, Terminating, NotFound or Unknown)"
)]
pub struct ParseStatusError(pub String);

impl FromStr for Status {
    type Err = ParseStatusError;

    /// Parses the exact names printed by [`Status::as_str`] (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

/// The type of a condition kstatus sets: the "abnormal-true" standard conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConditionType {
    /// The object is being reconciled (implied by every InProgress result).
    Reconciling,
    /// The object's reconciliation is stuck (implied by every Failed result).
    Stalled,
}

impl ConditionType {
    /// The condition type as written in `status.conditions[].type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConditionStatus {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
    Unknown,
}

impl ConditionStatus {
    /// The status as written in `status.conditions[].status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A standard condition implied by a result (`Reconciling=True` or `Stalled=True`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Condition {
    /// The condition type.
    #[serde(rename = "type")]
    pub r#type: ConditionType,
    /// The condition status (always `True` for conditions kstatus computes).
    pub status: ConditionStatus,
    /// One-word CamelCase reason (may be empty when carried over from the object).
    pub reason: String,
    /// Human-readable message (may be empty).
    pub message: String,
}

/// The result of computing an object's status from its own content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusResult {
    /// The computed status.
    pub status: Status,
    /// Why the object has this status.
    pub message: String,
    /// The standard conditions the result implies: `Reconciling=True` for InProgress,
    /// `Stalled=True` for Failed, none otherwise.
    pub conditions: Vec<Condition>,
}

impl StatusResult {
    /// A Current result with no conditions.
    pub fn current(message: impl Into<String>) -> Self {
        StatusResult {
            status: Status::Current,
            message: message.into(),
            conditions: Vec::new(),
        }
    }

    /// An InProgress result carrying `Reconciling=True` with `reason` and `message`.
    pub fn in_progress(reason: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        StatusResult {
            status: Status::InProgress,
            conditions: vec![Condition {
                r#type: ConditionType::Reconciling,
                status: ConditionStatus::True,
                reason: reason.into(),
                message: message.clone(),
            }],
            message,
        }
    }

    /// A Failed result carrying `Stalled=True` with `reason` and `message`.
    pub fn failed(reason: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        StatusResult {
            status: Status::Failed,
            conditions: vec![Condition {
                r#type: ConditionType::Stalled,
                status: ConditionStatus::True,
                reason: reason.into(),
                message: message.clone(),
            }],
            message,
        }
    }

    /// The Terminating result of an object with a deletion timestamp.
    pub fn terminating() -> Self {
        StatusResult {
            status: Status::Terminating,
            message: "Resource scheduled for deletion".to_owned(),
            conditions: Vec::new(),
        }
    }

    /// The reason of the result's first condition (`""` for Current and Terminating).
    pub fn reason(&self) -> &str {
        self.conditions
            .first()
            .map(|c| c.reason.as_str())
            .unwrap_or("")
    }
}

/// Why a status could not be computed: the object's content is malformed.
///
/// These errors are permanent for a given object content; recomputing after the object
/// changes may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The object (or a field that must be an object on the path to another) is not a JSON
    /// object.
    #[error("the object is not a JSON object")]
    NotAnObject,
    /// A field has the wrong JSON type.
    #[error("{field} is not {expected}")]
    WrongType {
        /// The field's path, e.g. `metadata.generation` or `status.conditions[2].type`.
        field: String,
        /// What it should be, e.g. `an integer`.
        expected: &'static str,
    },
    /// A Pod's `status.phase` is not one of the known phases.
    #[error("unknown phase {phase}")]
    UnknownPhase {
        /// The phase as found.
        phase: String,
    },
    /// A controller has no `spec.selector`, so its generated objects cannot be found.
    #[error("no selector found")]
    NoSelector,
    /// A controller's `spec.selector` is not a valid label selector.
    #[error("invalid spec.selector: {reason}")]
    BadSelector {
        /// What is wrong with it.
        reason: String,
    },
    /// The clock given to a `*_at` function cannot be represented as a Kubernetes timestamp.
    #[error("time out of range")]
    ClockOutOfRange,
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NotAnObject => "not_an_object",
            Error::WrongType { .. } => "wrong_type",
            Error::UnknownPhase { .. } => "unknown_phase",
            Error::NoSelector => "no_selector",
            Error::BadSelector { .. } => "bad_selector",
            Error::ClockOutOfRange => "clock_out_of_range",
        }
    }
}

/// Result of the status module's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        let names = [
            "InProgress",
            "Failed",
            "Current",
            "Terminating",
            "NotFound",
            "Unknown",
        ];
        for (status, name) in Status::ALL.into_iter().zip(names) {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
            assert_eq!(name.parse::<Status>(), Ok(status));
        }
    }

    #[test]
    fn status_parse_is_exact() {
        assert!("current".parse::<Status>().is_err());
        assert!("".parse::<Status>().is_err());
        assert!(" Current".parse::<Status>().is_err());
        let err = "Done".parse::<Status>().unwrap_err();
        assert!(err.to_string().contains("\"Done\""));
    }

    #[test]
    fn status_serde_uses_names() {
        assert_eq!(
            serde_json::to_value(Status::InProgress).unwrap(),
            serde_json::json!("InProgress")
        );
        let parsed: Status = serde_json::from_value(serde_json::json!("NotFound")).unwrap();
        assert_eq!(parsed, Status::NotFound);
    }

    #[test]
    fn constructors_imply_conditions() {
        let r = StatusResult::in_progress("R", "m");
        assert_eq!(r.status, Status::InProgress);
        assert_eq!(r.message, "m");
        assert_eq!(r.reason(), "R");
        assert_eq!(
            r.conditions,
            vec![Condition {
                r#type: ConditionType::Reconciling,
                status: ConditionStatus::True,
                reason: "R".into(),
                message: "m".into()
            }]
        );
        let f = StatusResult::failed("S", "x");
        assert_eq!(f.status, Status::Failed);
        assert_eq!(f.conditions[0].r#type, ConditionType::Stalled);
        assert_eq!(f.conditions[0].status, ConditionStatus::True);
        assert!(StatusResult::current("c").conditions.is_empty());
        assert_eq!(StatusResult::current("c").reason(), "");
        let t = StatusResult::terminating();
        assert_eq!(t.status, Status::Terminating);
        assert_eq!(t.message, "Resource scheduled for deletion");
        assert!(t.conditions.is_empty());
    }

    #[test]
    fn condition_serializes_with_type_key() {
        let c = &StatusResult::failed("Why", "msg").conditions[0];
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::json!({"type": "Stalled", "status": "True", "reason": "Why", "message": "msg"})
        );
    }

    #[test]
    fn error_messages_name_the_field() {
        let e = Error::WrongType {
            field: "metadata.generation".into(),
            expected: "an integer",
        };
        assert_eq!(e.to_string(), "metadata.generation is not an integer");
        assert_eq!(
            Error::UnknownPhase {
                phase: "Weird".into()
            }
            .to_string(),
            "unknown phase Weird"
        );
        assert_eq!(Error::NoSelector.to_string(), "no selector found");
        assert_eq!(Error::NoSelector.metric_label(), "no_selector");
    }
}
