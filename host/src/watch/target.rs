//! Resolving what a watch watches: [`resolve`] turns a [`WatchConfig`] into a [`Target`], the
//! [`ApiResource`] plus scope, namespaces and selectors.
//!
//! A CRD target ([`TargetConfig::Crd`], skafos' `StreamWatch('/path/to/crd.yml', ...)`) is read by
//! [`read_crd`] (either `apiextensions.k8s.io/v1` or the older `v1beta1` form, converted to v1),
//! registered if the cluster does not have it, and waited for until it is Established. Any other
//! kind ([`TargetConfig::Resource`], core kinds included) is looked up by discovery.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceConversion, CustomResourceDefinition,
    CustomResourceDefinitionNames, CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool, WebhookClientConfig, WebhookConversion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::core::gvk::GroupVersion;
use kube::core::ApiResource;
use kube::discovery::{self, verbs, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use serde::Deserialize;

use crate::config::yaml::{split_documents, Document, KeyPath};
use crate::config::{Problem, TargetConfig, WatchConfig};

/// How long [`resolve`] waits for a CRD to become Established.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

const CRD_GROUP_PREFIX: &str = "apiextensions.k8s.io/";
const CRD_V1: &str = "apiextensions.k8s.io/v1";
const CRD_V1BETA1: &str = "apiextensions.k8s.io/v1beta1";
const CRD_KIND: &str = "CustomResourceDefinition";

/// A resolved watch target: what the watch loop needs to list and watch.
#[derive(Debug, Clone)]
pub struct Target {
    /// Group, version, kind and plural of the watched resource.
    pub resource: ApiResource,
    /// Whether objects live in namespaces (else the resource is cluster-scoped).
    pub namespaced: bool,
    /// Namespaces to watch; empty means all (always empty for a cluster-scoped resource).
    pub namespaces: Vec<String>,
    /// Label selector, if any.
    pub label_selector: Option<String>,
    /// Field selector, if any.
    pub field_selector: Option<String>,
}

impl Target {
    /// `group/version/kind` (`version/kind` for the core group), for logs.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.api_version, self.resource.kind)
    }
}

/// Errors of resolving a target. A malformed CRD file, an unknown kind or a cluster-scoped
/// resource given namespaces need a config change; API failures may pass on a retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD file could not be read.
    #[error("cannot read CRD file {}", path.display())]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CRD file is not a usable CustomResourceDefinition.
    #[error("invalid CRD file {0}")]
    InvalidCrd(Problem),
    /// Looking the CRD up in the cluster failed.
    #[error("cannot look up CRD {name}")]
    GetCrdFailed {
        /// The CRD name (`<plural>.<group>`).
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Registering the CRD failed (the API server rejected it, or no permission).
    #[error("cannot create CRD {name}")]
    CreateCrdFailed {
        /// The CRD name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Watching the CRD for its Established condition failed.
    #[error("cannot wait for CRD {name} to be Established")]
    WaitFailed {
        /// The CRD name.
        name: String,
        /// The watch error.
        #[source]
        source: Box<kube::runtime::wait::Error>,
    },
    /// The CRD was not Established in time.
    #[error("CRD {name} was not Established within {}s", timeout.as_secs())]
    NotEstablished {
        /// The CRD name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The API server refused the CRD's names (e.g. a plural or kind another CRD uses).
    #[error("CRD {name} names were not accepted: {message}")]
    NamesRejected {
        /// The CRD name.
        name: String,
        /// The API server's reason.
        message: String,
    },
    /// The CRD disappeared while we waited for it.
    #[error("CRD {name} was deleted while waiting for it to be Established")]
    CrdDeleted {
        /// The CRD name.
        name: String,
    },
    /// The CRD in the cluster serves no version.
    #[error("CRD {name} in the cluster serves no version")]
    NoServedVersion {
        /// The CRD name.
        name: String,
    },
    /// Discovery of a group/version failed.
    #[error("cannot discover the resources of {api_version}")]
    DiscoveryFailed {
        /// `group/version` (or `version` for core).
        api_version: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server does not serve the group/version at all.
    #[error("the API server does not serve {api_version}")]
    GroupVersionNotServed {
        /// `group/version` (or `version` for core).
        api_version: String,
    },
    /// The group/version has no such kind.
    #[error("no resource kind {kind}{} in {api_version} (it serves: {})", plural.as_ref().map(|p| format!(" with plural {p}")).unwrap_or_default(), available.join(", "))]
    UnknownKind {
        /// `group/version`.
        api_version: String,
        /// The kind asked for.
        kind: String,
        /// The plural asked for, if any.
        plural: Option<String>,
        /// The kinds the group/version does serve.
        available: Vec<String>,
    },
    /// The resource cannot be listed and watched.
    #[error("{resource} cannot be listed and watched (verbs: {})", verbs.join(", "))]
    NotWatchable {
        /// `group/version/kind`.
        resource: String,
        /// The verbs it supports.
        verbs: Vec<String>,
    },
    /// Namespaces were given for a cluster-scoped resource.
    #[error("{resource} is cluster-scoped: remove `namespaces` ({}) from the watch", namespaces.join(", "))]
    ClusterScoped {
        /// `group/version/kind`.
        resource: String,
        /// The namespaces given.
        namespaces: Vec<String>,
    },
}

impl Error {
    /// Whether only a change of the configuration (or of the CRD file) can fix this: an
    /// unreadable or invalid CRD file, names the API server refused, namespaces on a
    /// cluster-scoped resource, a resource that cannot be watched, a CRD the API server
    /// found invalid. Everything else (a kind not served yet, API errors, timeouts, a missing
    /// permission) may pass later, so the watch waits for it and retries.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::ReadFailed { .. }
            | Error::InvalidCrd(_)
            | Error::NamesRejected { .. }
            | Error::NotWatchable { .. }
            | Error::ClusterScoped { .. } => true,
            Error::CreateCrdFailed { source, .. } => {
                matches!(&**source, kube::Error::Api(status) if status.code == 400 || status.code == 422)
            }
            Error::GetCrdFailed { .. }
            | Error::WaitFailed { .. }
            | Error::NotEstablished { .. }
            | Error::CrdDeleted { .. }
            | Error::NoServedVersion { .. }
            | Error::DiscoveryFailed { .. }
            | Error::GroupVersionNotServed { .. }
            | Error::UnknownKind { .. } => false,
        }
    }
}

/// Result of resolving a target.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Resolves `watch`'s target against the cluster: registers a CRD target if needed and waits until
/// it is Established, or discovers a resource target's plural and scope.
///
/// # Errors
/// See [`Error`]: a malformed CRD file, an API server that refuses or times out, a kind that is
/// not served, namespaces on a cluster-scoped resource.
pub async fn resolve(client: &Client, watch: &WatchConfig) -> Result<Target> {
    let (resource, namespaced) = match &watch.target {
        TargetConfig::Crd { path } => resolve_crd(client, path).await?,
        TargetConfig::Resource {
            group,
            version,
            kind,
            plural,
        } => discover(client, group, version, kind, plural.as_deref()).await?,
    };
    let target = Target {
        resource,
        namespaced,
        namespaces: watch.namespaces.clone(),
        label_selector: watch.label_selector.clone(),
        field_selector: watch.field_selector.clone(),
    };
    if !namespaced && !target.namespaces.is_empty() {
        return Err(Error::ClusterScoped {
            resource: target.describe(),
            namespaces: target.namespaces,
        });
    }
    tracing::info!(watch = %watch.name, resource = %target.describe(), plural = %target.resource.plural, namespaced, "watch target resolved");
    Ok(target)
}

async fn resolve_crd(client: &Client, path: &Path) -> Result<(ApiResource, bool)> {
    let crd = read_crd(path)?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::GetCrdFailed {
            name: name.clone(),
            source: Box::new(source),
        })?;
    if existing.is_some() {
        tracing::info!(crd = %name, file = %path.display(), "CRD already registered: using the cluster's definition");
    } else {
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => tracing::info!(crd = %name, file = %path.display(), "CRD registered"),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(crd = %name, "CRD registered concurrently by someone else")
            }
            Err(source) => {
                return Err(Error::CreateCrdFailed {
                    name,
                    source: Box::new(source),
                })
            }
        }
    }
    let established = conditions::is_crd_established();
    let settled = move |crd: Option<&CustomResourceDefinition>| {
        use kube::runtime::wait::Condition;
        established.matches_object(crd) || names_rejected(crd).is_some()
    };
    let crd = tokio::time::timeout(ESTABLISH_TIMEOUT, await_condition(api, &name, settled))
        .await
        .map_err(|_| Error::NotEstablished {
            name: name.clone(),
            timeout: ESTABLISH_TIMEOUT,
        })?
        .map_err(|source| Error::WaitFailed {
            name: name.clone(),
            source: Box::new(source),
        })?
        .ok_or_else(|| Error::CrdDeleted { name: name.clone() })?;
    if let Some(message) = names_rejected(Some(&crd)) {
        return Err(Error::NamesRejected { name, message });
    }
    tracing::debug!(crd = %name, "CRD established");
    api_resource(&crd).ok_or(Error::NoServedVersion { name })
}

/// The `NamesAccepted=False` message, if the API server refused the CRD's names.
fn names_rejected(crd: Option<&CustomResourceDefinition>) -> Option<String> {
    crd?.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "NamesAccepted" && c.status == "False")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// The [`ApiResource`] and scope of a CRD's watched version (see [`watched_version`]).
pub fn api_resource(crd: &CustomResourceDefinition) -> Option<(ApiResource, bool)> {
    let version = watched_version(crd)?;
    let spec = &crd.spec;
    let api_version = if spec.group.is_empty() {
        version.name.clone()
    } else {
        format!("{}/{}", spec.group, version.name)
    };
    Some((
        ApiResource {
            group: spec.group.clone(),
            version: version.name.clone(),
            api_version,
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
        },
        spec.scope == "Namespaced",
    ))
}

/// The version to watch: the storage version if it is served, else the first served version.
pub fn watched_version(crd: &CustomResourceDefinition) -> Option<&CustomResourceDefinitionVersion> {
    let versions = &crd.spec.versions;
    versions
        .iter()
        .find(|v| v.storage && v.served)
        .or_else(|| versions.iter().find(|v| v.served))
}

async fn discover(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: Option<&str>,
) -> Result<(ApiResource, bool)> {
    let gv = GroupVersion::gv(group, version);
    let api_version = gv.api_version();
    let api_group = match discovery::pinned_group(client, &gv).await {
        Ok(g) => g,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(Error::GroupVersionNotServed { api_version })
        }
        Err(source) => {
            return Err(Error::DiscoveryFailed {
                api_version,
                source: Box::new(source),
            })
        }
    };
    let resources = api_group.versioned_resources(version);
    let found = resources.iter().find(|(ar, _)| {
        ar.kind == kind && !ar.plural.contains('/') && plural.is_none_or(|p| ar.plural == p)
    });
    let Some((resource, caps)) = found else {
        let mut available: Vec<String> = resources
            .iter()
            .filter(|(ar, _)| !ar.plural.contains('/'))
            .map(|(ar, _)| ar.kind.clone())
            .collect();
        available.sort();
        available.dedup();
        return Err(Error::UnknownKind {
            api_version,
            kind: kind.to_string(),
            plural: plural.map(str::to_string),
            available,
        });
    };
    if !(caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::WATCH)) {
        return Err(Error::NotWatchable {
            resource: format!("{api_version}/{kind}"),
            verbs: caps.operations.clone(),
        });
    }
    Ok((resource.clone(), matches!(caps.scope, Scope::Namespaced)))
}

/// Reads a CustomResourceDefinition file, in `apiextensions.k8s.io/v1` form or the older
/// `v1beta1` form (converted to v1). A file of several YAML documents may hold other objects
/// too; exactly one of them must be the CRD.
///
/// The result is checked the way the API server would: group, names (kind, plural), scope, at
/// least one version, exactly one storage version, at least one served version,
/// `metadata.name` = `<plural>.<group>` (filled in when absent).
///
/// # Errors
/// [`Error::ReadFailed`], or [`Error::InvalidCrd`] naming the file, the line and the key.
pub fn read_crd(path: &Path) -> Result<CustomResourceDefinition> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFailed {
        path: path.to_path_buf(),
        source,
    })?;
    parse_crd(&text, path).map_err(Error::InvalidCrd)
}

/// The `apiVersion` and `kind` of any document.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses CRD `text` read from `file` (see [`read_crd`]).
fn parse_crd(text: &str, file: &Path) -> std::result::Result<CustomResourceDefinition, Problem> {
    let mut crds = Vec::new();
    let mut others = Vec::new();
    for (first_line, doc_text) in split_documents(text) {
        let doc = Document::new(doc_text, file, first_line);
        if doc.is_empty() {
            continue;
        }
        if doc.is_yaml() && !doc.is_mapping() {
            return Err(doc.problem(
                &KeyPath::root(),
                "not a Kubernetes object: expected a mapping with `apiVersion` and `kind`",
            ));
        }
        // Reports the syntax error of a document that is not YAML.
        let header: Header = doc.deserialize()?;
        let api_version = header.api_version.unwrap_or_default();
        let kind = header.kind.unwrap_or_default();
        if kind == CRD_KIND && api_version.starts_with(CRD_GROUP_PREFIX) {
            crds.push((doc, api_version));
        } else {
            others.push((doc, api_version, kind));
        }
    }
    let (doc, api_version) = match (crds.len(), others.len()) {
        (1, _) => crds.remove(0),
        (0, 0) => {
            return Err(Document::new(text, file, 0).problem(
                &KeyPath::root(),
                "the file is empty: expected a CustomResourceDefinition",
            ))
        }
        (0, 1) => {
            let (doc, api_version, kind) = &others[0];
            let (key, what) = if kind.is_empty() {
                ("kind", "no `kind`".to_string())
            } else if api_version.is_empty() {
                ("apiVersion", format!("kind {kind} without `apiVersion`"))
            } else {
                ("kind", format!("{kind} ({api_version})"))
            };
            return Err(doc.problem(
                &KeyPath::root().key(key),
                format!("not a CustomResourceDefinition: {what}"),
            ));
        }
        (0, n) => {
            return Err(Document::new(text, file, 0).problem(
                &KeyPath::root(),
                format!("none of the {n} documents is a CustomResourceDefinition"),
            ))
        }
        (n, _) => {
            let lines: Vec<String> = crds
                .iter()
                .map(|(doc, _)| doc.position(&KeyPath::root()).line.to_string())
                .collect();
            return Err(crds[1].0.problem(
                &KeyPath::root(),
                format!(
                    "{n} CustomResourceDefinitions in one file (at lines {}): a watch needs exactly one",
                    lines.join(", ")
                ),
            ));
        }
    };
    let mut crd = match api_version.as_str() {
        CRD_V1 => doc.deserialize_strict::<CustomResourceDefinition>(
            "spec",
            "a v1 CustomResourceDefinition (Kubernetes 1.34): it would be dropped",
        )?,
        CRD_V1BETA1 => convert_v1beta1(&doc, doc.deserialize::<V1beta1Crd>()?)?,
        other => {
            return Err(doc.problem(
                &KeyPath::root().key("apiVersion"),
                format!("unsupported apiVersion {other}: expected {CRD_V1} or {CRD_V1BETA1}"),
            ))
        }
    };
    check_crd(&doc, &mut crd)?;
    Ok(crd)
}

/// Checks what the API server would reject, with the key and line; fills in `metadata.name`.
fn check_crd(
    doc: &Document<'_>,
    crd: &mut CustomResourceDefinition,
) -> std::result::Result<(), Problem> {
    let spec_at = KeyPath::root().key("spec");
    let fail = |path: KeyPath, message: String| Err(doc.problem(&path, message));
    let spec = &crd.spec;
    if spec.group.trim().is_empty() {
        return fail(spec_at.key("group"), "is missing or empty".into());
    }
    if spec.names.kind.trim().is_empty() {
        return fail(
            spec_at.key("names").key("kind"),
            "is missing or empty".into(),
        );
    }
    if spec.names.plural.trim().is_empty() {
        return fail(
            spec_at.key("names").key("plural"),
            "is missing or empty".into(),
        );
    }
    if spec.scope != "Namespaced" && spec.scope != "Cluster" {
        return fail(
            spec_at.key("scope"),
            format!(
                "{:?} is not a scope: expected Namespaced or Cluster",
                spec.scope
            ),
        );
    }
    let versions_at = spec_at.key("versions");
    if spec.versions.is_empty() {
        return fail(versions_at, "at least one version is required".into());
    }
    for (i, v) in spec.versions.iter().enumerate() {
        if v.name.trim().is_empty() {
            return fail(
                versions_at.index(i).key("name"),
                "is missing or empty".into(),
            );
        }
        if spec.versions[..i].iter().any(|o| o.name == v.name) {
            return fail(
                versions_at.index(i).key("name"),
                format!("version {} is listed twice", v.name),
            );
        }
    }
    let storage: Vec<&str> = spec
        .versions
        .iter()
        .filter(|v| v.storage)
        .map(|v| v.name.as_str())
        .collect();
    match storage.len() {
        0 => {
            return fail(
                versions_at,
                "no storage version: exactly one version must have `storage: true`".into(),
            )
        }
        1 => {}
        _ => {
            return fail(
                versions_at,
                format!(
                    "several storage versions ({}): exactly one version must have `storage: true`",
                    storage.join(", ")
                ),
            )
        }
    }
    if !spec.versions.iter().any(|v| v.served) {
        return fail(
            versions_at,
            "no served version: at least one version must have `served: true`".into(),
        );
    }
    let expected = format!("{}.{}", spec.names.plural, spec.group);
    match &crd.metadata.name {
        None => crd.metadata.name = Some(expected),
        Some(name) if *name == expected => {}
        Some(name) => {
            return fail(
                KeyPath::root().key("metadata").key("name"),
                format!("{name:?} must be <plural>.<group>: {expected:?}"),
            )
        }
    }
    Ok(())
}

/// `apiextensions.k8s.io/v1beta1` CustomResourceDefinition, as far as it differs from v1.
#[derive(Deserialize)]
struct V1beta1Crd {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: V1beta1Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V1beta1Spec {
    group: String,
    names: CustomResourceDefinitionNames,
    scope: Option<String>,
    version: Option<String>,
    #[serde(default)]
    versions: Vec<V1beta1Version>,
    validation: Option<CustomResourceValidation>,
    subresources: Option<CustomResourceSubresources>,
    additional_printer_columns: Option<Vec<V1beta1Column>>,
    preserve_unknown_fields: Option<bool>,
    conversion: Option<V1beta1Conversion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V1beta1Version {
    name: String,
    served: bool,
    storage: bool,
    schema: Option<CustomResourceValidation>,
    subresources: Option<CustomResourceSubresources>,
    additional_printer_columns: Option<Vec<V1beta1Column>>,
    deprecated: Option<bool>,
    deprecation_warning: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1beta1Column {
    name: String,
    #[serde(rename = "type")]
    type_: String,
    format: Option<String>,
    description: Option<String>,
    priority: Option<i32>,
    #[serde(rename = "JSONPath")]
    json_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V1beta1Conversion {
    strategy: String,
    webhook_client_config: Option<WebhookClientConfig>,
    conversion_review_versions: Option<Vec<String>>,
}

impl From<V1beta1Column> for CustomResourceColumnDefinition {
    fn from(c: V1beta1Column) -> Self {
        Self {
            name: c.name,
            type_: c.type_,
            format: c.format,
            description: c.description,
            priority: c.priority,
            json_path: c.json_path,
        }
    }
}

/// Marks every object node of `schema` that does not say otherwise (and is not a map) with
/// `x-kubernetes-preserve-unknown-fields: true`: v1's way of saying v1beta1's default of not
/// pruning unknown fields.
fn keep_unknown_fields(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("object")
        && schema.additional_properties.is_none()
        && schema.x_kubernetes_preserve_unknown_fields.is_none()
    {
        schema.x_kubernetes_preserve_unknown_fields = Some(true);
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        keep_unknown_fields(child);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => keep_unknown_fields(items),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => {
            list.iter_mut().for_each(keep_unknown_fields)
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        keep_unknown_fields(values);
    }
}

/// Converts a v1beta1 CRD to v1 as the API server does: `spec.version` becomes the single served
/// storage version, the top-level schema, subresources and printer columns move into each
/// version, and a version without a schema gets `{type: object,
/// x-kubernetes-preserve-unknown-fields: true}`. v1beta1 kept unknown fields unless
/// `preserveUnknownFields: false`; that is kept by marking the schema's object nodes.
fn convert_v1beta1(
    doc: &Document<'_>,
    raw: V1beta1Crd,
) -> std::result::Result<CustomResourceDefinition, Problem> {
    let spec_at = KeyPath::root().key("spec");
    let spec = raw.spec;
    let mut versions = spec.versions;
    match (&spec.version, versions.first()) {
        (None, None) => {
            return Err(doc.problem(&spec_at, "no version: give `version` or a `versions` list"))
        }
        (Some(v), None) => versions.push(V1beta1Version {
            name: v.clone(),
            served: true,
            storage: true,
            schema: None,
            subresources: None,
            additional_printer_columns: None,
            deprecated: None,
            deprecation_warning: None,
        }),
        (Some(v), Some(first)) if *v != first.name => {
            return Err(doc.problem(
                &spec_at.key("version"),
                format!(
                    "`version` {v} must be the first entry of `versions` ({})",
                    first.name
                ),
            ))
        }
        _ => {}
    }
    let preserve_unknown = spec.preserve_unknown_fields != Some(false);
    let shared_schema = spec.validation.and_then(|v| v.open_api_v3_schema);
    let versions = versions
        .into_iter()
        .map(|v| {
            let mut schema = v
                .schema
                .and_then(|s| s.open_api_v3_schema)
                .or_else(|| shared_schema.clone())
                .unwrap_or_else(|| JSONSchemaProps {
                    type_: Some("object".into()),
                    x_kubernetes_preserve_unknown_fields: Some(true),
                    ..Default::default()
                });
            if schema.type_.is_none() {
                schema.type_ = Some("object".into());
            }
            if preserve_unknown {
                keep_unknown_fields(&mut schema);
            }
            let columns = v
                .additional_printer_columns
                .or_else(|| spec.additional_printer_columns.clone())
                .map(|cols| cols.into_iter().map(Into::into).collect());
            CustomResourceDefinitionVersion {
                name: v.name,
                served: v.served,
                storage: v.storage,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: v.subresources.or_else(|| spec.subresources.clone()),
                additional_printer_columns: columns,
                deprecated: v.deprecated,
                deprecation_warning: v.deprecation_warning,
                selectable_fields: None,
            }
        })
        .collect();
    let conversion = spec.conversion.map(|c| {
        let webhook = (c.strategy == "Webhook").then(|| WebhookConversion {
            client_config: c.webhook_client_config,
            conversion_review_versions: c
                .conversion_review_versions
                .unwrap_or_else(|| vec!["v1beta1".into()]),
        });
        CustomResourceConversion {
            strategy: c.strategy,
            webhook,
        }
    });
    Ok(CustomResourceDefinition {
        metadata: raw.metadata,
        spec: CustomResourceDefinitionSpec {
            group: spec.group,
            names: spec.names,
            scope: spec.scope.unwrap_or_else(|| "Namespaced".into()),
            versions,
            conversion,
            preserve_unknown_fields: None,
        },
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/crds")
    }

    fn parse(text: &str) -> std::result::Result<CustomResourceDefinition, Problem> {
        parse_crd(text, Path::new("crd.yaml"))
    }

    #[test]
    fn only_errors_a_config_change_fixes_are_permanent() {
        let api = |code: u16| {
            Box::new(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        let name = || "things.x.dev".to_string();
        let permanent = [
            Error::ClusterScoped {
                resource: "v1/Node".into(),
                namespaces: vec!["a".into()],
            },
            Error::NamesRejected {
                name: name(),
                message: "taken".into(),
            },
            Error::NotWatchable {
                resource: "v1/Binding".into(),
                verbs: vec!["create".into()],
            },
            Error::CreateCrdFailed {
                name: name(),
                source: api(422),
            },
        ];
        for err in &permanent {
            assert!(err.is_permanent(), "{err}");
        }
        let passing = [
            Error::UnknownKind {
                api_version: "x.dev/v1".into(),
                kind: "Late".into(),
                plural: None,
                available: vec![],
            },
            Error::GroupVersionNotServed {
                api_version: "x.dev/v1".into(),
            },
            Error::CreateCrdFailed {
                name: name(),
                source: api(403),
            },
            Error::GetCrdFailed {
                name: name(),
                source: api(503),
            },
            Error::NotEstablished {
                name: name(),
                timeout: ESTABLISH_TIMEOUT,
            },
            Error::NoServedVersion { name: name() },
        ];
        for err in &passing {
            assert!(!err.is_permanent(), "{err}");
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(crd) => panic!("should fail, got {crd:?}"),
            Err(p) => p.to_string(),
        }
    }

    fn assert_err(text: &str, expected: &[&str]) {
        let message = parse_err(text);
        for part in expected {
            assert!(
                message.contains(part),
                "error {message:?} should contain {part:?}"
            );
        }
    }

    fn schema(crd: &CustomResourceDefinition, version: usize) -> &JSONSchemaProps {
        crd.spec.versions[version]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema")
    }

    #[test]
    fn reads_the_v1_example() {
        let crd = read_crd(&examples().join("superpod-v1.yaml")).unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("superpods.kubelisten.dev")
        );
        assert_eq!(crd.spec.group, "kubelisten.dev");
        assert_eq!(crd.spec.names.kind, "SuperPod");
        assert_eq!(crd.spec.scope, "Namespaced");
        let names: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1", "v1alpha1"]);
        assert_eq!(watched_version(&crd).unwrap().name, "v1");
        let (ar, namespaced) = api_resource(&crd).unwrap();
        assert_eq!(
            (
                ar.api_version.as_str(),
                ar.kind.as_str(),
                ar.plural.as_str()
            ),
            ("kubelisten.dev/v1", "SuperPod", "superpods")
        );
        assert!(namespaced);
        assert!(schema(&crd, 0)
            .properties
            .as_ref()
            .unwrap()
            .contains_key("spec"));
    }

    #[test]
    fn reads_the_v1beta1_example() {
        let crd = read_crd(&examples().join("superpod-v1beta1.yaml")).unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("superpods.kubelisten.dev")
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), ("v1", true, true));
        let s = schema(&crd, 0);
        assert_eq!(s.type_.as_deref(), Some("object"));
        assert_eq!(s.x_kubernetes_preserve_unknown_fields, Some(true));
        let spec = &s.properties.as_ref().unwrap()["spec"];
        assert_eq!(spec.x_kubernetes_preserve_unknown_fields, Some(true));
        let image = &spec.properties.as_ref().unwrap()["image"];
        assert_eq!(image.x_kubernetes_preserve_unknown_fields, None);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["sp".to_string()][..])
        );
    }

    #[test]
    fn reads_skafos_example_without_schema() {
        let text = "apiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\nmetadata:\n  name: superpods.crds.example.com\nspec:\n  group: crds.example.com\n  names:\n    kind: SuperPod\n    listKind: SuperPodList\n    plural: superpods\n    shortNames:\n      - sp\n    singular: superpod\n  scope: Namespaced\n  version: v1";
        let crd = parse(text).unwrap();
        let s = schema(&crd, 0);
        assert_eq!(s.type_.as_deref(), Some("object"));
        assert_eq!(s.x_kubernetes_preserve_unknown_fields, Some(true));
        assert!(s.properties.is_none());
        let (ar, namespaced) = api_resource(&crd).unwrap();
        assert_eq!(ar.api_version, "crds.example.com/v1");
        assert!(namespaced);
    }

    #[test]
    fn converts_v1beta1_versions_columns_and_pruning() {
        let text = r#"apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
spec:
  group: example.com
  names: {kind: Thing, plural: things}
  scope: Cluster
  preserveUnknownFields: false
  validation:
    openAPIV3Schema:
      type: object
      properties:
        spec: {type: object}
  subresources:
    status: {}
  additionalPrinterColumns:
    - {name: Age, type: date, JSONPath: .metadata.creationTimestamp}
  versions:
    - {name: v2, served: true, storage: false}
    - {name: v1, served: false, storage: true}
"#;
        let crd = parse(text).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("things.example.com"));
        assert_eq!(crd.spec.versions.len(), 2);
        for i in 0..2 {
            let s = schema(&crd, i);
            assert_eq!(s.x_kubernetes_preserve_unknown_fields, None);
            assert!(s.properties.as_ref().unwrap().contains_key("spec"));
            let v = &crd.spec.versions[i];
            assert!(v.subresources.as_ref().unwrap().status.is_some());
            let cols = v.additional_printer_columns.as_ref().unwrap();
            assert_eq!(cols[0].json_path, ".metadata.creationTimestamp");
        }
        // The storage version is not served: the first served one is watched.
        assert_eq!(watched_version(&crd).unwrap().name, "v2");
        let (ar, namespaced) = api_resource(&crd).unwrap();
        assert_eq!(ar.api_version, "example.com/v2");
        assert!(!namespaced);
    }

    #[test]
    fn picks_the_crd_among_several_documents() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n# the CRD\napiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\nspec:\n  group: example.com\n  names: {kind: Thing, plural: things}\n  version: v1\n---\n";
        let crd = parse(text).unwrap();
        assert_eq!(crd.spec.names.kind, "Thing");
        // Lines count from the file's start, not the document's.
        let text = "apiVersion: v1\nkind: Namespace\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec:\n  group: example.com\n  names: {kind: Thing}\n  scope: Namespaced\n  versions: []\n";
        assert_err(
            text,
            &["crd.yaml:8:10: spec.names.plural: is missing or empty"],
        );
    }

    #[test]
    fn malformed_files() {
        // Not YAML.
        assert_err(
            "apiVersion: apiextensions.k8s.io/v1\nkind: [\n",
            &["crd.yaml:2:7: kind:"],
        );
        // Not an object.
        assert_err("- a\n- b\n", &["crd.yaml:1:1: not a Kubernetes object"]);
        // Not a CRD.
        assert_err(
            "apiVersion: apps/v1\nkind: Deployment\n",
            &["crd.yaml:2:7: kind: not a CustomResourceDefinition: Deployment (apps/v1)"],
        );
        assert_err(
            "apiVersion: v1\nkind: Namespace\n---\napiVersion: v1\nkind: ConfigMap\n",
            &["none of the 2 documents is a CustomResourceDefinition"],
        );
        assert_err("# nothing here\n", &["crd.yaml: the file is empty"]);
        assert_err(
            "apiVersion: apiextensions.k8s.io/v2\nkind: CustomResourceDefinition\n",
            &["crd.yaml:1:13: apiVersion: unsupported apiVersion apiextensions.k8s.io/v2"],
        );
        // Missing pieces.
        let v1 = |spec: &str| {
            format!("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec:\n{spec}")
        };
        assert_err(
            &v1("  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions: []\n"),
            &["crd.yaml:4:3: spec.group: is missing or empty"],
        );
        assert_err(
            &v1("  group: \"\"\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions: []\n"),
            &["crd.yaml:4:10: spec.group: is missing or empty"],
        );
        assert_err(
            &v1("  group: e.com\n  scope: Namespaced\n  versions: []\n"),
            &["crd.yaml:4:3: spec.names.kind: is missing or empty"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions: []\n"),
            &["crd.yaml:7:13: spec.versions: at least one version is required"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions:\n    - {name: v1, served: true, storage: false}\n"),
            &["crd.yaml:8:5: spec.versions: no storage version"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions:\n    - {name: v1, served: true, storage: true}\n    - {name: v2, served: true, storage: true}\n"),
            &["spec.versions: several storage versions (v1, v2)"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions:\n    - {name: v1, served: false, storage: true}\n"),
            &["spec.versions: no served version"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Global\n  versions:\n    - {name: v1, served: true, storage: true}\n"),
            &["crd.yaml:6:10: spec.scope: \"Global\" is not a scope"],
        );
        assert_err(
            &v1("  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions:\n    - {name: v1, served: yes please, storage: true}\n"),
            &["crd.yaml:8:", "spec.versions[0].served:"],
        );
        assert_err(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: wrong\nspec:\n  group: e.com\n  names: {kind: T, plural: ts}\n  scope: Namespaced\n  versions:\n    - {name: v1, served: true, storage: true}\n",
            &["crd.yaml:4:9: metadata.name: \"wrong\" must be <plural>.<group>: \"ts.e.com\""],
        );
        // v1beta1 specifics.
        let beta = |spec: &str| {
            format!("apiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\nspec:\n  group: e.com\n  names: {{kind: T, plural: ts}}\n{spec}")
        };
        assert_err(
            &beta("  scope: Namespaced\n"),
            &["crd.yaml:4:", "spec: no version"],
        );
        assert_err(
            &beta("  version: v1\n  versions:\n    - {name: v2, served: true, storage: true}\n"),
            &["crd.yaml:6:12: spec.version: `version` v1 must be the first entry of `versions` (v2)"],
        );
        assert_err(
            &beta("  version: v1\n  validaton: {}\n"),
            &["crd.yaml:7:3: spec: unknown field `validaton`"],
        );
        assert_err(
            &beta("  versions:\n    - {name: v1, served: true}\n"),
            &["spec.versions[0]: missing field `storage`"],
        );
        // v1: a key k8s-openapi would skip is an error at its position, as for v1beta1.
        let v1 = |extra: &str| {
            format!("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec:\n  group: e.com\n  names: {{kind: T, plural: ts}}\n  scope: Namespaced\n  versions:\n    - name: v1\n      served: true\n      storage: true\n{extra}")
        };
        assert!(parse(&v1("      subresources: {status: {}}\n")).is_ok());
        assert_err(
            &v1("      subresource: {status: {}}\n"),
            &["crd.yaml:11:", "spec.versions[0].subresource: unknown field `subresource` in a v1 CustomResourceDefinition"],
        );
        assert_err(
            &v1("      additionalPrinterColums: []\n"),
            &["unknown field `additionalPrinterColums`"],
        );
        // A `status` from a newer API server (`kubectl get crd -o yaml`) is not checked.
        assert!(parse(&format!(
            "{}status:\n  observedGeneration: 3\n  acceptedNames: {{kind: T, plural: ts}}\n",
            v1("")
        ))
        .is_ok());
        // Two CRDs.
        let one = "apiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\nspec:\n  group: e.com\n  names: {kind: T, plural: ts}\n  version: v1\n";
        assert_err(
            &format!("{one}---\n{one}"),
            &["2 CustomResourceDefinitions in one file (at lines 1, 8)"],
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let err = read_crd(Path::new("/nonexistent/crd.yaml")).unwrap_err();
        assert!(matches!(err, Error::ReadFailed { .. }));
        assert!(err.to_string().contains("/nonexistent/crd.yaml"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "apiVersion: apps/v1\nkind: Deployment\n").unwrap();
        let err = read_crd(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid CRD file {}:2:7: kind:", path.display())),
            "{err}"
        );
    }
}
