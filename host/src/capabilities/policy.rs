//! What a listener may do through the `cluster` import: a list of grants shaped like RBAC rules
//! (API groups, resources, verbs, namespaces) plus a request rate limit. The default is nothing.

use std::fmt;

use serde::Deserialize;

use crate::config::yaml::KeyPath;

/// An operation a guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    /// `get`
    Get,
    /// `list`
    List,
    /// `create` (also `record-event`, on `events`)
    Create,
    /// Server-side `apply`.
    Apply,
    /// `patch` (and `patch-status`, on `<resource>/status`)
    Patch,
    /// `delete`
    Delete,
    /// Every verb.
    #[serde(rename = "*")]
    All,
}

impl Verb {
    /// The verb's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Apply => "apply",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::All => "*",
        }
    }
}

/// Which namespaces a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Namespaces {
    /// Only the namespace of the object whose event is being handled (`event`).
    #[default]
    Event,
    /// Every namespace and cluster-scoped objects (`"*"`).
    All,
    /// These namespaces.
    Only(Vec<String>),
}

impl<'de> Deserialize<'de> for Namespaces {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) if s == "event" => Ok(Namespaces::Event),
            Raw::One(s) if s == "*" => Ok(Namespaces::All),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "namespaces: expected \"event\", \"*\" or a list of namespaces, got {s:?}"
            ))),
            Raw::Many(list) => Ok(Namespaces::Only(list)),
        }
    }
}

/// One permission, like an RBAC rule. `patch-status` needs the resource `<plural>/status`;
/// `record-event` needs `events` (group `events.k8s.io`) with `create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grant {
    /// API groups (`""` is the core group, `"*"` any).
    pub api_groups: Vec<String>,
    /// Resources, plural (`pods`, `pods/status`, `"*"` any).
    pub resources: Vec<String>,
    /// Verbs.
    pub verbs: Vec<Verb>,
    /// Namespaces (default: the event object's namespace).
    #[serde(default)]
    pub namespaces: Namespaces,
}

/// Requests per second and burst of one listener's cluster calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub qps: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl RateLimit {
    /// The first setting that cannot work, as its key and what is wrong: a rate or burst of 0.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        [("qps", self.qps), ("burst", self.burst)]
            .into_iter()
            .find(|(_, value)| *value == 0)
            .map(|(key, _)| (key, "must be at least 1".to_string()))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { qps: 10, burst: 20 }
    }
}

/// A listener's capabilities (`capabilities:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct Capabilities {
    /// What the listener may do; empty = nothing.
    pub grants: Vec<Grant>,
    /// Request rate limit.
    pub rate_limit: RateLimit,
}

impl Capabilities {
    /// The first part of these capabilities that cannot be what was meant, as its key path
    /// (under `capabilities`) and what is wrong: a rate or burst of 0; a grant with an empty
    /// `apiGroups`, `resources`, `verbs` or `namespaces` list (it would match nothing); `"*"` or
    /// `event` inside a `namespaces` list (they are values of their own, not namespace names:
    /// in a list they would match nothing); a listed namespace that is not a namespace name.
    pub(crate) fn problem(&self) -> Option<(KeyPath, String)> {
        let root = KeyPath::root();
        if let Some((key, problem)) = self.rate_limit.problem() {
            return Some((root.key("rateLimit").key(key), problem));
        }
        for (i, grant) in self.grants.iter().enumerate() {
            let at = root.key("grants").index(i);
            let empty = [
                (
                    "apiGroups",
                    grant.api_groups.is_empty(),
                    "\"\" is the core group, \"*\" any",
                ),
                ("resources", grant.resources.is_empty(), "\"*\" is any"),
                ("verbs", grant.verbs.is_empty(), "\"*\" is any"),
            ];
            if let Some((key, _, hint)) = empty.into_iter().find(|(_, empty, _)| *empty) {
                return Some((at.key(key), format!("must list at least one ({hint})")));
            }
            let Namespaces::Only(list) = &grant.namespaces else {
                continue;
            };
            let at = at.key("namespaces");
            if list.is_empty() {
                return Some((
                    at,
                    "must list at least one namespace, or be \"event\" (the default) or \"*\""
                        .into(),
                ));
            }
            for (j, namespace) in list.iter().enumerate() {
                let problem = match namespace.as_str() {
                    "*" | "event" => format!(
                        "{namespace:?} in a list is taken for a namespace of that name: write \
                         `namespaces: {namespace:?}` (a string, not a list)"
                    ),
                    _ => match crate::watch::selectors::check_namespace(namespace) {
                        Ok(()) => continue,
                        Err(message) => message,
                    },
                };
                return Some((at.index(j), problem));
            }
        }
        None
    }
}

/// One request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// API group (`""` for core).
    pub group: &'a str,
    /// Resource plural, with `/status` for the status subresource; `None` before discovery
    /// (then only group, verb and namespace are checked).
    pub resource: Option<&'a str>,
    /// The verb.
    pub verb: Verb,
    /// The object's namespace (`None`: cluster-scoped or all namespaces).
    pub namespace: Option<&'a str>,
}

impl fmt::Display for Access<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{apiGroups: [{:?}], resources: [{}], verbs: [{}], namespaces: {}}}",
            self.group,
            self.resource.unwrap_or("?"),
            self.verb.as_str(),
            self.namespace
                .map_or_else(|| "\"*\"".to_string(), |n| format!("[{n}]"))
        )
    }
}

impl Capabilities {
    /// Whether a grant allows `access` for an event in `event_namespace`.
    ///
    /// # Errors
    /// The message names the grant that would be needed.
    pub fn check(&self, access: &Access<'_>, event_namespace: Option<&str>) -> Result<(), String> {
        let allowed = self.grants.iter().any(|g| {
            let group = g.api_groups.iter().any(|x| x == "*" || x == access.group);
            let resource = access
                .resource
                .is_none_or(|r| g.resources.iter().any(|x| x == "*" || x == r));
            let verb = g.verbs.iter().any(|v| *v == Verb::All || *v == access.verb);
            let namespace = match (&g.namespaces, access.namespace) {
                (Namespaces::All, _) => true,
                (Namespaces::Event, Some(ns)) => event_namespace == Some(ns),
                (Namespaces::Only(list), Some(ns)) => list.iter().any(|x| x == ns),
                (_, None) => false,
            };
            group && resource && verb && namespace
        });
        if allowed {
            Ok(())
        } else if self.grants.is_empty() {
            Err(format!(
                "no capabilities granted (default deny); needs a grant {access}"
            ))
        } else {
            Err(format!("not granted; needs a grant {access}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(yaml: &str) -> Capabilities {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn access<'a>(
        group: &'a str,
        resource: &'a str,
        verb: Verb,
        ns: Option<&'a str>,
    ) -> Access<'a> {
        Access {
            group,
            resource: Some(resource),
            verb,
            namespace: ns,
        }
    }

    #[test]
    fn default_denies_everything() {
        let c = Capabilities::default();
        let err = c
            .check(&access("", "pods", Verb::Get, Some("a")), Some("a"))
            .unwrap_err();
        assert!(
            err.contains("default deny") && err.contains("pods"),
            "{err}"
        );
    }

    #[test]
    fn grants_scope_by_group_resource_verb_and_namespace() {
        let c = caps(
            "grants:\n  - apiGroups: ['']\n    resources: [pods]\n    verbs: [get, create]\n  - apiGroups: [kubelisten.dev]\n    resources: [superpods/status]\n    verbs: [patch]\n    namespaces: [team-a]\n  - apiGroups: ['*']\n    resources: [namespaces]\n    verbs: [list]\n    namespaces: '*'\nrateLimit: {qps: 2, burst: 3}\n",
        );
        assert_eq!(c.rate_limit, RateLimit { qps: 2, burst: 3 });
        assert!(c
            .check(&access("", "pods", Verb::Create, Some("ev")), Some("ev"))
            .is_ok());
        assert!(
            c.check(&access("", "pods", Verb::Create, Some("other")), Some("ev"))
                .is_err(),
            "event namespace only"
        );
        assert!(
            c.check(&access("", "pods", Verb::Delete, Some("ev")), Some("ev"))
                .is_err(),
            "verb not granted"
        );
        assert!(
            c.check(&access("", "services", Verb::Get, Some("ev")), Some("ev"))
                .is_err(),
            "resource not granted"
        );
        assert!(c
            .check(
                &access(
                    "kubelisten.dev",
                    "superpods/status",
                    Verb::Patch,
                    Some("team-a")
                ),
                None
            )
            .is_ok());
        assert!(c
            .check(
                &access("kubelisten.dev", "superpods", Verb::Patch, Some("team-a")),
                None
            )
            .is_err());
        assert!(
            c.check(&access("", "namespaces", Verb::List, None), None)
                .is_ok(),
            "cluster-scoped needs '*'"
        );
        assert!(c
            .check(&access("", "pods", Verb::Get, None), Some("ev"))
            .is_err());
        let pre = Access {
            group: "",
            resource: None,
            verb: Verb::Get,
            namespace: Some("ev"),
        };
        assert!(
            c.check(&pre, Some("ev")).is_ok(),
            "pre-check before discovery ignores the resource"
        );
    }

    #[test]
    fn bad_namespaces_value_is_an_error() {
        assert!(serde_saphyr::from_str::<Capabilities>(
            "grants:\n  - {apiGroups: [''], resources: [pods], verbs: [get], namespaces: mine}\n"
        )
        .is_err());
    }
}
