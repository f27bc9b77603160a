//! Reading `status.conditions` as a list of `{type, status, reason, message}`.

use serde_json::Value;

use super::fields::strict_lookup;
use super::{Error, Result};

/// One entry of `status.conditions`, with missing strings read as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ObjectCondition {
    pub r#type: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl ObjectCondition {
    /// Whether this is a condition of type `ty` with status `status`.
    pub(crate) fn is(&self, ty: &str, status: &str) -> bool {
        self.r#type == ty && self.status == status
    }
}

/// The object's `status.conditions` in order.
///
/// `status` and `status.conditions` may be missing or `null` (no conditions).
///
/// # Errors
/// [`Error::WrongType`] naming the field when `status` is not an object, `status.conditions`
/// is not an array, an entry is not an object, or an entry's `type`, `status`, `reason` or
/// `message` is present but not a string.
pub(crate) fn read(object: &Value) -> Result<Vec<ObjectCondition>> {
    let Some(list) = strict_lookup(object, &["status", "conditions"])? else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        return Err(Error::WrongType {
            field: "status.conditions".into(),
            expected: "an array",
        });
    };
    list.iter()
        .enumerate()
        .map(|(index, entry)| {
            let Some(entry) = entry.as_object() else {
                return Err(Error::WrongType {
                    field: format!("status.conditions[{index}]"),
                    expected: "an object",
                });
            };
            let text = |key: &str| -> Result<String> {
                match entry.get(key) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(Error::WrongType {
                        field: format!("status.conditions[{index}].{key}"),
                        expected: "a string",
                    }),
                }
            };
            Ok(ObjectCondition {
                r#type: text("type")?,
                status: text("status")?,
                reason: text("reason")?,
                message: text("message")?,
            })
        })
        .collect()
}

/// The first condition of type `ty` with status `status`.
pub(crate) fn find<'a>(
    conditions: &'a [ObjectCondition],
    ty: &str,
    status: &str,
) -> Option<&'a ObjectCondition> {
    conditions.iter().find(|c| c.is(ty, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(ty: &str, status: &str, reason: &str, message: &str) -> ObjectCondition {
        ObjectCondition {
            r#type: ty.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn missing_or_null_means_none() {
        assert_eq!(read(&json!({})), Ok(vec![]));
        assert_eq!(read(&json!({"status": null})), Ok(vec![]));
        assert_eq!(read(&json!({"status": {}})), Ok(vec![]));
        assert_eq!(read(&json!({"status": {"conditions": null}})), Ok(vec![]));
        assert_eq!(read(&json!({"status": {"conditions": []}})), Ok(vec![]));
    }

    #[test]
    fn reads_in_order_with_defaults() {
        let o = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Ok", "message": "fine", "lastTransitionTime": "x"},
            {"type": "Other"},
            {"type": "X", "status": "False", "reason": null}
        ]}});
        assert_eq!(
            read(&o),
            Ok(vec![
                cond("Ready", "True", "Ok", "fine"),
                cond("Other", "", "", ""),
                cond("X", "False", "", ""),
            ])
        );
    }

    #[test]
    fn malformed_is_an_error_naming_the_field() {
        let wrong = |field: &str, expected| {
            Err(Error::WrongType {
                field: field.into(),
                expected,
            })
        };
        assert_eq!(read(&json!({"status": "x"})), wrong("status", "an object"));
        assert_eq!(
            read(&json!({"status": {"conditions": {}}})),
            wrong("status.conditions", "an array")
        );
        assert_eq!(
            read(&json!({"status": {"conditions": [{"type": "A"}, 3]}})),
            wrong("status.conditions[1]", "an object")
        );
        assert_eq!(
            read(&json!({"status": {"conditions": [{"type": 1}]}})),
            wrong("status.conditions[0].type", "a string")
        );
        assert_eq!(
            read(&json!({"status": {"conditions": [{"type": "A", "status": true}]}})),
            wrong("status.conditions[0].status", "a string")
        );
        assert_eq!(
            read(&json!({"status": {"conditions": [{"type": "A", "reason": []}]}})),
            wrong("status.conditions[0].reason", "a string")
        );
        assert_eq!(
            read(&json!({"status": {"conditions": [{"type": "A", "message": {}}]}})),
            wrong("status.conditions[0].message", "a string")
        );
    }

    #[test]
    fn find_first_matching() {
        let list = vec![
            cond("A", "False", "first", ""),
            cond("A", "True", "second", ""),
            cond("A", "True", "third", ""),
        ];
        assert_eq!(
            find(&list, "A", "True").map(|c| c.reason.as_str()),
            Some("second")
        );
        assert_eq!(find(&list, "B", "True"), None);
    }
}
