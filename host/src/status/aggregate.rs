//! The aggregate of many statuses toward a desired one.

use super::Status;

/// Aggregates `statuses` toward `desired`: no statuses → `desired`; any Failed → Failed;
/// else any Unknown → Unknown; all equal to `desired` → `desired`; else InProgress.
///
/// This is when a set of objects is "done": e.g. all Current after an apply, or all NotFound
/// after a delete.
pub fn aggregate(statuses: &[Status], desired: Status) -> Status {
    if statuses.is_empty() {
        return desired;
    }
    if statuses.contains(&Status::Failed) {
        return Status::Failed;
    }
    if statuses.contains(&Status::Unknown) {
        return Status::Unknown;
    }
    if statuses.iter().all(|s| *s == desired) {
        return desired;
    }
    Status::InProgress
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn empty_is_desired() {
        for desired in Status::ALL {
            assert_eq!(aggregate(&[], desired), desired);
        }
    }

    #[test]
    fn any_failed_is_failed() {
        assert_eq!(aggregate(&[Current, Failed, Unknown], Current), Failed);
        assert_eq!(aggregate(&[Failed], NotFound), Failed);
        // Even when Failed is the desired status.
        assert_eq!(aggregate(&[Failed, Failed], Failed), Failed);
    }

    #[test]
    fn any_unknown_is_unknown() {
        assert_eq!(aggregate(&[Current, Unknown, InProgress], Current), Unknown);
        assert_eq!(aggregate(&[Unknown], Unknown), Unknown);
    }

    #[test]
    fn all_desired_is_desired() {
        assert_eq!(aggregate(&[Current, Current], Current), Current);
        assert_eq!(aggregate(&[NotFound, NotFound], NotFound), NotFound);
        assert_eq!(aggregate(&[Terminating], Terminating), Terminating);
    }

    #[test]
    fn otherwise_in_progress() {
        assert_eq!(aggregate(&[Current, InProgress], Current), InProgress);
        assert_eq!(aggregate(&[Current, Terminating], NotFound), InProgress);
        assert_eq!(aggregate(&[NotFound, Current], NotFound), InProgress);
        assert_eq!(aggregate(&[Current], InProgress), InProgress);
    }
}
