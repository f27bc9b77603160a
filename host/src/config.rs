//! The `kubelisten run --config kubelisten.yaml` file: [`load`] reads it into a validated
//! [`Config`], the list of watches and their listener chains.
//!
//! ```yaml
//! watches:
//!   - name: superpods                    # unique; names the watch in logs
//!     crd: crds/superpod-v1.yaml         # a CRD file (apiextensions.k8s.io/v1 or v1beta1),
//!                                        # registered if the cluster does not have it
//!     namespaces: [team-a, team-b]       # optional; absent or empty = all namespaces
//!     labelSelector: app=web             # optional
//!     fieldSelector: metadata.name!=skip # optional
//!     listeners:                         # called in this order for every event
//!       - name: audit                    # optional; defaults to the module's file stem
//!         module: guests/audit.wasm      # relative to this file's directory
//!         mode: reference                # reference | classname (the default)
//!         limits:                        # optional; every key has a default
//!           call-timeout: 500            # milliseconds
//!           call-wall-timeout: 30000     # ms, host calls included (default 30 s)
//!           memory-bytes: 33554432     # default 64 MiB, over all of the instance's memories
//!           table-elements: 100000       # over all of its tables
//!           instances: 100               # core instances, tables and memories it may create
//!           crash-loop-threshold: 5      # consecutive traps that start a backoff
//!           crash-loop-backoff: 1000     # ms, the first backoff; doubles per further one
//!           crash-loop-backoff-max: 300000  # ms
//!           prewarm: true                # classname: build the next event's instance ahead
//!         capabilities:                  # optional; default: no Kubernetes API access at all
//!           rateLimit: {qps: 10, burst: 20}
//!           grants:                      # RBAC-like; `namespaces: event` (the default) means
//!             - apiGroups: [""]          # the namespace of the object being handled
//!               resources: [pods]
//!               verbs: [get, create, delete]
//!               namespaces: event        # or "*" (all, and cluster-scoped), or [a, b]
//!       - module: guests/notify.wasm     # name: notify, mode: classname, default limits
//!   - name: configmaps
//!     resource:                          # any kind, core kinds included (group "" or absent)
//!       group: ""
//!       version: v1
//!       kind: ConfigMap
//!       plural: configmaps               # optional; discovered from the API server
//!     namespaces: [default]
//!     labelSelector: kubelisten.dev/watch=true
//!     listeners:
//!       - {name: echo-configmaps, module: guests/echo.wasm}
//!   - name: deployments
//!     apiVersion: apps/v1                # short form of `resource`
//!     kind: Deployment
//!     listeners:
//!       - {name: echo-deployments, module: guests/echo.wasm}  # names are unique in the file
//! ```
//!
//! Rules: there is at least one watch and watch names are unique; each watch has exactly one
//! target (`crd`, `resource`, or `apiVersion` + `kind`) and at least one listener; listener names
//! are unique in the whole file (a name identifies one listener in logs, metrics, capability
//! grants and hot swaps; the same module may run under several names); kind and version are not
//! empty. Unknown keys are errors. Every
//! error names the file, the line and column, and the key path, e.g.
//! `kubelisten.yaml:8:9: watches[0].listeners[1]: unknown field `modul`, expected one of ...`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capabilities::policy::Capabilities;
use crate::runtime::{Limits, ListenerSpec, Mode};

use self::yaml::{Document, KeyPath};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The watches, in file order.
    pub watches: Vec<WatchConfig>,
}

/// One watch: a target resource, where and what to watch, and the listener chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Unique name of the watch.
    pub name: String,
    /// What to watch.
    pub target: TargetConfig,
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Label selector (`app=web,tier!=db`), if any.
    pub label_selector: Option<String>,
    /// Field selector (`metadata.name=x`), if any.
    pub field_selector: Option<String>,
    /// The listener chain, called in this order; never empty.
    pub listeners: Vec<ListenerSpec>,
}

/// What a watch watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    /// The resource defined by a CustomResourceDefinition file.
    Crd {
        /// Path of the CRD file (resolved against the config file's directory).
        path: PathBuf,
    },
    /// Any served resource kind, found by discovery.
    Resource {
        /// API group; empty for the core group.
        group: String,
        /// API version, e.g. `v1`.
        version: String,
        /// Kind, e.g. `ConfigMap`.
        kind: String,
        /// Plural resource name; discovered when absent.
        plural: Option<String>,
    },
}

impl fmt::Display for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetConfig::Crd { path } => write!(f, "CRD file {}", path.display()),
            TargetConfig::Resource {
                group,
                version,
                kind,
                ..
            } if group.is_empty() => write!(f, "{version}/{kind}"),
            TargetConfig::Resource {
                group,
                version,
                kind,
                ..
            } => write!(f, "{group}/{version}/{kind}"),
        }
    }
}

/// A place in a file: `file:line:column`; line and column count from 1, 0 when unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The file.
    pub file: PathBuf,
    /// Line, from 1; 0 when unknown.
    pub line: u64,
    /// Column, from 1; 0 when unknown.
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        Ok(())
    }
}

/// What is wrong at one key of a YAML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub at: Position,
    /// Key path such as `watches[0].listeners[1].module`; empty for the whole document.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.key, self.message)
        }
    }
}

/// Errors of reading the configuration file. None is retryable: the file must be fixed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML, or does not have the expected shape (unknown key, wrong type,
    /// missing key).
    #[error("{0}")]
    ParseFailed(Problem),
    /// The file has the expected shape but breaks a rule (duplicate names, no listeners, ...).
    #[error("{0}")]
    ValidationFailed(Problem),
}

impl Error {
    /// The problem, with its position, unless the file could not be read.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::ReadFailed { .. } => None,
            Error::ParseFailed(p) | Error::ValidationFailed(p) => Some(p),
        }
    }
}

/// Result of reading the configuration.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads and validates the configuration file at `path`.
///
/// # Errors
/// [`Error::ReadFailed`] if the file cannot be read, else as [`parse`].
pub fn load(path: &Path) -> Result<Config> {
    parse(&read(path)?, path)
}

/// Reads the configuration at `path` for a host whose listeners come from a modules ConfigMap
/// (`--modules-configmap`): the same rules as [`load`], except that a watch may list no
/// listeners, since the ConfigMap's `listeners.yaml` supplies every chain.
///
/// # Errors
/// As [`load`].
pub fn load_watches(path: &Path) -> Result<Config> {
    validate(&read(path)?, path, Listeners::Optional)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadFailed {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and validates configuration `text` read from `origin`: errors name `origin`, and
/// relative module and CRD paths are resolved against its directory.
///
/// # Errors
/// [`Error::ParseFailed`] for YAML that is malformed or has the wrong shape,
/// [`Error::ValidationFailed`] for a rule broken; both say where.
pub fn parse(text: &str, origin: &Path) -> Result<Config> {
    validate(text, origin, Listeners::Required)
}

/// Whether every watch must list at least one listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listeners {
    Required,
    Optional,
}

fn validate(text: &str, origin: &Path, listeners: Listeners) -> Result<Config> {
    let doc = Document::new(text, origin, 0);
    if doc.is_empty() {
        return Err(Error::ValidationFailed(doc.problem(
            &KeyPath::root(),
            "the file is empty: expected a top-level `watches:` list",
        )));
    }
    let raw: RawConfig = doc.deserialize().map_err(Error::ParseFailed)?;
    let base = origin.parent().unwrap_or_else(|| Path::new(""));
    Validator {
        doc: &doc,
        base,
        listeners,
    }
    .config(raw)
    .map_err(Error::ValidationFailed)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    watches: Vec<RawWatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWatch {
    name: String,
    crd: Option<PathBuf>,
    resource: Option<RawResource>,
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    #[serde(default)]
    listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    group: Option<String>,
    version: String,
    kind: String,
    plural: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    module: PathBuf,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    capabilities: Capabilities,
}

/// Turns the raw, well-shaped file into a [`Config`], checking the rules serde cannot.
struct Validator<'a> {
    doc: &'a Document<'a>,
    base: &'a Path,
    listeners: Listeners,
}

type Checked<T> = std::result::Result<T, Problem>;

impl Validator<'_> {
    fn fail<T>(&self, path: &KeyPath, message: impl Into<String>) -> Checked<T> {
        Err(self.doc.problem(path, message))
    }

    fn config(&self, raw: RawConfig) -> Checked<Config> {
        let path = KeyPath::root().key("watches");
        if raw.watches.is_empty() {
            return self.fail(&path, "at least one watch is required");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        // Listener name -> (watch index, listener index) of its first use.
        let mut listener_names: HashMap<String, (usize, usize)> = HashMap::new();
        let mut watches: Vec<WatchConfig> = Vec::with_capacity(raw.watches.len());
        for (i, raw) in raw.watches.into_iter().enumerate() {
            let at = path.index(i);
            let watch = self.watch(&at, raw)?;
            if let Some(first) = seen.insert(watch.name.clone(), i) {
                let first_line = self.doc.position(&path.index(first).key("name")).line;
                return self.fail(
                    &at.key("name"),
                    format!(
                        "duplicate watch name {:?} (also at line {first_line})",
                        watch.name
                    ),
                );
            }
            for (j, listener) in watch.listeners.iter().enumerate() {
                let Some((fw, fl)) = listener_names.insert(listener.name.clone(), (i, j)) else {
                    continue;
                };
                let first_line = self
                    .doc
                    .position(&path.index(fw).key("listeners").index(fl))
                    .line;
                return self.fail(
                    &at.key("listeners").index(j),
                    format!(
                        "listener name {:?} is also used in watch {:?} (line {first_line}); a \
                         name identifies one listener in logs, metrics, capabilities and hot \
                         swaps, so give one of them a different `name`",
                        listener.name, watches[fw].name
                    ),
                );
            }
            watches.push(watch);
        }
        Ok(Config { watches })
    }

    fn watch(&self, at: &KeyPath, raw: RawWatch) -> Checked<WatchConfig> {
        let name = raw.name.trim().to_string();
        if name.is_empty() {
            return self.fail(&at.key("name"), "must not be empty");
        }
        let target = self.target(at, &raw)?;
        for (i, ns) in raw.namespaces.iter().enumerate() {
            let ns_at = at.key("namespaces").index(i);
            if ns.trim().is_empty() {
                return self.fail(&ns_at, "namespace must not be empty");
            }
            if let Err(why) = crate::watch::selectors::check_namespace(ns) {
                return self.fail(&ns_at, why);
            }
            if raw.namespaces[..i].contains(ns) {
                return self.fail(&ns_at, format!("namespace {ns:?} is listed twice"));
            }
        }
        let selector = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        use crate::watch::selectors::{check_field_selector, check_label_selector};
        if let Some(s) = &raw.label_selector {
            if let Err(why) = check_label_selector(s) {
                return self.fail(&at.key("labelSelector"), why);
            }
        }
        if let Some(s) = &raw.field_selector {
            if let Err(why) = check_field_selector(s) {
                return self.fail(&at.key("fieldSelector"), why);
            }
        }
        let listeners_at = at.key("listeners");
        if raw.listeners.is_empty() && self.listeners == Listeners::Required {
            return self.fail(
                &listeners_at,
                format!("watch {name:?} needs at least one listener"),
            );
        }
        let mut listeners: Vec<ListenerSpec> = Vec::with_capacity(raw.listeners.len());
        for (i, raw) in raw.listeners.into_iter().enumerate() {
            let l_at = listeners_at.index(i);
            let spec = self.listener(&l_at, raw)?;
            if let Some(first) = listeners.iter().position(|l| l.name == spec.name) {
                let first_line = self.doc.position(&listeners_at.index(first)).line;
                return self.fail(
                    &l_at,
                    format!(
                        "duplicate listener name {:?} in watch {name:?} (also at line {first_line}); \
                         give one of them a different `name`",
                        spec.name
                    ),
                );
            }
            listeners.push(spec);
        }
        Ok(WatchConfig {
            name,
            target,
            namespaces: raw.namespaces,
            label_selector: selector(raw.label_selector),
            field_selector: selector(raw.field_selector),
            listeners,
        })
    }

    fn target(&self, at: &KeyPath, raw: &RawWatch) -> Checked<TargetConfig> {
        let mut given = Vec::new();
        if raw.crd.is_some() {
            given.push("crd");
        }
        if raw.resource.is_some() {
            given.push("resource");
        }
        if raw.api_version.is_some() || raw.kind.is_some() {
            given.push(if raw.api_version.is_some() {
                "apiVersion"
            } else {
                "kind"
            });
        }
        const ONE_OF: &str = "give exactly one target: `crd: <file>`, \
                              `resource: {group, version, kind}`, or `apiVersion` + `kind`";
        match given.as_slice() {
            [] => return self.fail(at, format!("no target: {ONE_OF}")),
            [_] => {}
            [_, second, ..] => {
                return self.fail(
                    &at.key(second),
                    format!("several targets ({}): {ONE_OF}", given.join(", ")),
                )
            }
        }
        if let Some(path) = &raw.crd {
            if path.as_os_str().is_empty() {
                return self.fail(&at.key("crd"), "must not be empty");
            }
            return Ok(TargetConfig::Crd {
                path: self.base.join(path),
            });
        }
        if let Some(res) = &raw.resource {
            let res_at = at.key("resource");
            let version = res.version.trim();
            if version.is_empty() {
                return self.fail(&res_at.key("version"), "must not be empty");
            }
            if version.contains('/') {
                return self.fail(
                    &res_at.key("version"),
                    format!("{version:?} is not a version: put the group in `group`"),
                );
            }
            let kind = self.kind(&res_at.key("kind"), &res.kind)?;
            let plural = match res.plural.as_deref().map(str::trim) {
                Some("") => return self.fail(&res_at.key("plural"), "must not be empty"),
                p => p.map(str::to_string),
            };
            return Ok(TargetConfig::Resource {
                group: res.group.as_deref().unwrap_or_default().trim().to_string(),
                version: version.to_string(),
                kind,
                plural,
            });
        }
        let Some(api_version) = raw.api_version.as_deref() else {
            return self.fail(&at.key("kind"), "`kind` needs `apiVersion` (e.g. apps/v1)");
        };
        let Some(kind) = raw.kind.as_deref() else {
            return self.fail(
                &at.key("apiVersion"),
                "`apiVersion` needs `kind` (e.g. Deployment)",
            );
        };
        let (group, version) = match api_version.trim().split_once('/') {
            None => ("", api_version.trim()),
            Some((group, version)) => (group, version),
        };
        if version.is_empty()
            || version.contains('/')
            || (api_version.contains('/') && group.is_empty())
        {
            return self.fail(
                &at.key("apiVersion"),
                format!("{api_version:?} is not an apiVersion: expected `<group>/<version>` or `<version>` for the core group"),
            );
        }
        Ok(TargetConfig::Resource {
            group: group.to_string(),
            version: version.to_string(),
            kind: self.kind(&at.key("kind"), kind)?,
            plural: None,
        })
    }

    fn kind(&self, at: &KeyPath, kind: &str) -> Checked<String> {
        let kind = kind.trim();
        if kind.is_empty() {
            return self.fail(at, "must not be empty");
        }
        if !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return self.fail(at, format!("{kind:?} is not a kind (e.g. ConfigMap)"));
        }
        Ok(kind.to_string())
    }

    fn listener(&self, at: &KeyPath, raw: RawListener) -> Checked<ListenerSpec> {
        if raw.module.as_os_str().is_empty() {
            return self.fail(&at.key("module"), "must not be empty");
        }
        let name = match raw.name {
            Some(name) if name.trim().is_empty() => {
                return self.fail(&at.key("name"), "must not be empty")
            }
            Some(name) => name.trim().to_string(),
            None => match raw.module.file_stem().and_then(|s| s.to_str()) {
                Some(stem) if !stem.is_empty() => stem.to_string(),
                _ => {
                    return self.fail(
                        &at.key("module"),
                        "cannot derive a listener name from the module path: add `name`",
                    )
                }
            },
        };
        if let Err(message) = crate::runtime::check_listener_name(&name) {
            return self.fail(at, message);
        }
        if let Some((key, problem)) = raw.limits.problem() {
            return self.fail(&at.key("limits").key(key), problem);
        }
        if let Some((key, problem)) = raw.capabilities.problem() {
            return self.fail(&at.key("capabilities").join(&key), problem);
        }
        Ok(ListenerSpec {
            name,
            path: self.base.join(&raw.module),
            mode: raw.mode,
            limits: raw.limits,
            capabilities: raw.capabilities,
        })
    }
}

/// YAML reading shared by the config file and CRD files: typed deserialization whose errors name
/// the key path and position, and a span tree that positions the errors found after it.
pub(crate) mod yaml {
    use std::fmt::{self, Write as _};
    use std::path::Path;

    use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess};
    use serde::Deserialize;
    use serde_saphyr::{MessageFormatter as _, Spanned};

    use super::{Position, Problem};

    /// Appends the segments of a key that `serde_ignored` reports as skipped.
    fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                ignored_path(parent, out);
                out.push(Segment::Index(*index));
            }
            serde_ignored::Path::Map { parent, key } => {
                ignored_path(parent, out);
                out.push(Segment::Key(key.clone()));
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent, out),
        }
    }

    /// One step of a [`KeyPath`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Segment {
        Key(String),
        Index(usize),
    }

    /// A path into a YAML document: `watches[0].listeners[1].name`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct KeyPath(Vec<Segment>);

    impl KeyPath {
        /// The document itself.
        pub(crate) fn root() -> Self {
            Self::default()
        }

        /// This path followed by mapping key `key`.
        pub(crate) fn key(&self, key: &str) -> Self {
            let mut path = self.clone();
            path.0.push(Segment::Key(key.to_string()));
            path
        }

        /// This path followed by `rest`.
        pub(crate) fn join(&self, rest: &KeyPath) -> Self {
            let mut path = self.clone();
            path.0.extend(rest.0.iter().cloned());
            path
        }

        /// This path followed by sequence index `index`.
        pub(crate) fn index(&self, index: usize) -> Self {
            let mut path = self.clone();
            path.0.push(Segment::Index(index));
            path
        }

        fn from_serde(path: &serde_path_to_error::Path) -> Self {
            use serde_path_to_error::Segment as S;
            Self(
                path.iter()
                    .filter_map(|s| match s {
                        S::Seq { index } => Some(Segment::Index(*index)),
                        S::Map { key } => Some(Segment::Key(key.clone())),
                        S::Enum { variant } => Some(Segment::Key(variant.clone())),
                        S::Unknown => None,
                    })
                    .collect(),
            )
        }
    }

    impl fmt::Display for KeyPath {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for (i, segment) in self.0.iter().enumerate() {
                match segment {
                    Segment::Key(k) if i == 0 => f.write_str(k)?,
                    Segment::Key(k) => write!(f, ".{k}")?,
                    Segment::Index(n) => write!(f, "[{n}]")?,
                }
            }
            Ok(())
        }
    }

    /// Shape of a YAML node, each child with its position (for positioning later errors).
    enum Node {
        Map(Vec<(String, Spanned<Node>)>),
        Seq(Vec<Spanned<Node>>),
        Scalar,
    }

    /// One YAML document of a file, possibly starting below the file's first line.
    pub(crate) struct Document<'a> {
        text: &'a str,
        file: &'a Path,
        first_line: u64,
        /// `None` when the document is empty or not valid YAML.
        spans: Option<Spanned<Node>>,
    }

    impl<'a> Document<'a> {
        /// `text` is the document, `file` names it in errors, `first_line` is the number of
        /// lines of the file before it.
        pub(crate) fn new(text: &'a str, file: &'a Path, first_line: u64) -> Self {
            let spans = serde_saphyr::from_str::<Option<Spanned<Node>>>(text)
                .ok()
                .flatten();
            Self {
                text,
                file,
                first_line,
                spans,
            }
        }

        /// Whether the document holds nothing (only blanks, comments, markers) or null.
        pub(crate) fn is_empty(&self) -> bool {
            serde_saphyr::from_str::<Option<IgnoredAny>>(self.text).is_ok_and(|v| v.is_none())
        }

        /// Whether the document is well-formed YAML.
        pub(crate) fn is_yaml(&self) -> bool {
            self.spans.is_some() || self.is_empty()
        }

        /// Whether the document's root is a mapping.
        pub(crate) fn is_mapping(&self) -> bool {
            matches!(self.spans.as_ref().map(|n| &n.value), Some(Node::Map(_)))
        }

        /// Deserializes the document; the error names the key path, line and column.
        pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Problem> {
            let mut failed_at: Option<KeyPath> = None;
            let result = serde_saphyr::with_deserializer_from_str(self.text, |de| {
                serde_path_to_error::deserialize(de).map_err(|err| {
                    failed_at = Some(KeyPath::from_serde(err.path()));
                    err.into_inner()
                })
            });
            result.map_err(|err| {
                let inner = err.without_snippet();
                let message = plain(&serde_saphyr::UserMessageFormatter.format_message(inner));
                let mut path = failed_at.unwrap_or_default();
                // `unknown field `x`` already names the key: point at its mapping.
                if let Some(Segment::Key(k)) = path.0.last() {
                    if message.starts_with("unknown field") && message.contains(&format!("`{k}`")) {
                        path.0.pop();
                    }
                }
                // A missing field is reported where its mapping ends: point at where it starts.
                let location = err
                    .location()
                    .filter(|l| l.line() > 0 && !message.starts_with("missing field"));
                let (line, column) = match location {
                    Some(l) => (self.first_line + l.line(), l.column()),
                    None => self.node_at(&path).map_or((0, 0), |n| self.line_column(n)),
                };
                Problem {
                    at: Position {
                        file: self.file.to_path_buf(),
                        line,
                        column,
                    },
                    key: path.to_string(),
                    message,
                }
            })
        }

        /// Like [`Document::deserialize`] for a type that skips keys it does not know (as
        /// k8s-openapi's do): such a key under the top-level key `strict_under` is an error at
        /// its position, `what` naming the type (as `kubectl apply`'s strict validation would
        /// refuse it). Keys elsewhere (say, a `status` from a newer API server) pass.
        pub(crate) fn deserialize_strict<T: DeserializeOwned>(
            &self,
            strict_under: &str,
            what: &str,
        ) -> Result<T, Problem> {
            let value = self.deserialize::<T>()?;
            let mut unknown: Option<KeyPath> = None;
            let _ = serde_saphyr::with_deserializer_from_str(self.text, |de| {
                serde_ignored::deserialize::<_, _, T>(de, |path| {
                    let mut segments = Vec::new();
                    ignored_path(&path, &mut segments);
                    let checked =
                        matches!(segments.first(), Some(Segment::Key(k)) if k == strict_under);
                    if unknown.is_none() && checked {
                        unknown = Some(KeyPath(segments));
                    }
                })
            });
            match unknown {
                None => Ok(value),
                Some(path) => {
                    let key = match path.0.last() {
                        Some(Segment::Key(key)) => key.clone(),
                        _ => path.to_string(),
                    };
                    Err(self.problem(&path, format!("unknown field `{key}` in {what}")))
                }
            }
        }

        /// Where `path` is: the position of its deepest node that exists.
        pub(crate) fn position(&self, path: &KeyPath) -> Position {
            let (line, column) = self
                .node_at(path)
                .map_or((0, 0), |node| self.line_column(node));
            Position {
                file: self.file.to_path_buf(),
                line,
                column,
            }
        }

        /// A problem at `path` (see [`Document::position`]).
        pub(crate) fn problem(&self, path: &KeyPath, message: impl Into<String>) -> Problem {
            Problem {
                at: self.position(path),
                key: path.to_string(),
                message: message.into(),
            }
        }

        fn line_column(&self, node: &Spanned<Node>) -> (u64, u64) {
            match node.referenced.line() {
                0 => (0, 0),
                line => (self.first_line + line, node.referenced.column()),
            }
        }

        fn node_at(&self, path: &KeyPath) -> Option<&Spanned<Node>> {
            let mut node = self.spans.as_ref()?;
            for segment in &path.0 {
                let next = match (&node.value, segment) {
                    (Node::Map(entries), Segment::Key(k)) => {
                        entries.iter().find(|(key, _)| key == k).map(|(_, n)| n)
                    }
                    (Node::Seq(items), Segment::Index(i)) => items.get(*i),
                    _ => None,
                };
                match next {
                    Some(next) => node = next,
                    None => break,
                }
            }
            Some(node)
        }
    }

    /// Says the parser's terse messages in words; makes the message safe for one log line.
    fn plain(message: &str) -> String {
        let message = match message {
            "expected sequence start" => "expected a list",
            "expected mapping start" => "expected a mapping (key: value)",
            "expected string scalar" => "expected a string",
            "invalid u64" | "invalid u32" | "invalid usize" => "expected a non-negative integer",
            "invalid i32" | "invalid i64" => "expected an integer",
            "invalid boolean" => "expected true or false",
            other => other,
        };
        let mut out = String::with_capacity(message.len());
        for c in message.chars() {
            if c.is_control() {
                let _ = write!(out, "{}", c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Splits a multi-document YAML file at its `---` markers: `(lines before, document)`.
    pub(crate) fn split_documents(text: &str) -> Vec<(u64, &str)> {
        let mut docs = Vec::new();
        let mut start = 0;
        let mut start_line = 0u64;
        let mut offset = 0;
        for (line_no, line) in text.split_inclusive('\n').enumerate() {
            let is_marker = line
                .strip_prefix("---")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
            if is_marker && offset > start {
                docs.push((start_line, &text[start..offset]));
                start = offset;
                start_line = line_no as u64;
            }
            offset += line.len();
        }
        docs.push((start_line, &text[start..]));
        docs
    }

    /// A mapping key of any scalar type, as text.
    struct Key(String);

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> de::Visitor<'de> for V {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a mapping key")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                    Ok(Key(v.to_string()))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                    Ok(Key(v.to_string()))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                    Ok(Key(v.to_string()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                    Ok(Key(v.to_string()))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                    Ok(Key(v.to_string()))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                    Ok(Key(String::new()))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Key(String::new()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Key(String::new()))
                }
            }
            d.deserialize_any(V)
        }
    }

    impl<'de> Deserialize<'de> for Node {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> de::Visitor<'de> for V {
                type Value = Node;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any YAML node")
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                    Ok(Node::Scalar)
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                    Node::deserialize(d)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                    let mut entries = Vec::new();
                    while let Some((k, v)) = map.next_entry::<Key, Spanned<Node>>()? {
                        entries.push((k.0, v));
                    }
                    Ok(Node::Map(entries))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                    let mut items = Vec::new();
                    while let Some(v) = seq.next_element::<Spanned<Node>>()? {
                        items.push(v);
                    }
                    Ok(Node::Seq(items))
                }
            }
            d.deserialize_any(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = r#"# kubelisten config
watches:
  - name: superpods
    crd: crds/superpod.yaml
    namespaces: [a, b]
    labelSelector: app=web
    fieldSelector: metadata.name!=skip
    listeners:
      - name: audit
        module: guests/audit.wasm
        mode: reference
        limits:
          call-timeout: 250
          memory-bytes: 1048576
      - module: /abs/notify.wasm
  - name: configmaps
    resource: {version: v1, kind: ConfigMap}
    listeners:
      - {name: echo-cm, module: echo.wasm, mode: classname, limits: {prewarm: false}}
  - name: deployments
    apiVersion: apps/v1
    kind: Deployment
    listeners:
      - {module: echo.wasm}
"#;

    fn parse_err(text: &str) -> String {
        let err = parse(text, Path::new("conf/kubelisten.yaml")).expect_err("must fail");
        err.to_string()
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

    #[test]
    fn parses_a_good_file() {
        let config = parse(GOOD, Path::new("conf/kubelisten.yaml")).unwrap();
        assert_eq!(config.watches.len(), 3);
        let w = &config.watches[0];
        assert_eq!(w.name, "superpods");
        assert_eq!(
            w.target,
            TargetConfig::Crd {
                path: PathBuf::from("conf/crds/superpod.yaml")
            }
        );
        assert_eq!(w.namespaces, ["a", "b"]);
        assert_eq!(w.label_selector.as_deref(), Some("app=web"));
        assert_eq!(w.field_selector.as_deref(), Some("metadata.name!=skip"));
        assert_eq!(w.listeners.len(), 2);
        let audit = &w.listeners[0];
        assert_eq!(audit.name, "audit");
        assert_eq!(audit.path, PathBuf::from("conf/guests/audit.wasm"));
        assert_eq!(audit.mode, Mode::Reference);
        assert_eq!(audit.limits.call_timeout, Duration::from_millis(250));
        assert_eq!(audit.limits.memory_bytes, 1 << 20);
        assert_eq!(
            audit.limits.crash_loop_threshold,
            Limits::default().crash_loop_threshold
        );
        let notify = &w.listeners[1];
        assert_eq!(notify.name, "notify");
        assert_eq!(notify.path, PathBuf::from("/abs/notify.wasm"));
        assert_eq!(notify.mode, Mode::Classname);
        assert_eq!(notify.limits, Limits::default());
        assert!(notify.limits.prewarm, "prewarm is on by default");
        assert!(!config.watches[1].listeners[0].limits.prewarm);

        let cm = &config.watches[1];
        assert_eq!(
            cm.target,
            TargetConfig::Resource {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: None
            }
        );
        assert!(cm.namespaces.is_empty());
        assert_eq!(cm.target.to_string(), "v1/ConfigMap");
        let deploy = &config.watches[2];
        assert_eq!(
            deploy.target,
            TargetConfig::Resource {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                plural: None
            }
        );
        assert_eq!(deploy.listeners[0].name, "echo");
        assert_eq!(deploy.target.to_string(), "apps/v1/Deployment");
    }

    #[test]
    fn relative_paths_without_a_directory() {
        let config = parse(
            "watches:\n  - name: w\n    crd: c.yaml\n    listeners: [{module: m.wasm}]\n",
            Path::new("kubelisten.yaml"),
        )
        .unwrap();
        assert_eq!(config.watches[0].listeners[0].path, PathBuf::from("m.wasm"));
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelisten.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let config = load(&path).unwrap();
        assert_eq!(
            config.watches[0].listeners[0].path,
            dir.path().join("guests/audit.wasm")
        );
        let missing = dir.path().join("nope.yaml");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, Error::ReadFailed { .. }));
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }

    #[test]
    fn watches_without_listeners_only_when_a_configmap_supplies_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelisten.yaml");
        std::fs::write(
            &path,
            "watches:\n  - name: a\n    crd: c.yaml\n  - name: b\n    apiVersion: v1\n    kind: ConfigMap\n    listeners: []\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("at least one listener"), "{err}");
        let config = load_watches(&path).unwrap();
        let names: Vec<&str> = config.watches.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(config.watches.iter().all(|w| w.listeners.is_empty()));
        // Every other rule still applies.
        std::fs::write(
            &path,
            "watches:\n  - name: a\n  - name: a\n    crd: c.yaml\n",
        )
        .unwrap();
        let err = load_watches(&path).unwrap_err().to_string();
        assert!(err.contains("kubelisten.yaml:2:5"), "{err}");
    }

    #[test]
    fn syntax_error() {
        assert_err(
            "watches:\n  - name: a\n    listeners: [\n",
            &[
                "conf/kubelisten.yaml:3:",
                "watches[0].listeners",
                "unclosed",
            ],
        );
        let text = "watches:\n  - name: a\n   bad indent: x\n";
        let err = parse(text, Path::new("k.yaml")).unwrap_err();
        let Error::ParseFailed(p) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(p.at.line, 3, "{err}");
    }

    #[test]
    fn unknown_key() {
        let text = "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - name: l1\n        module: a.wasm\n      - name: l2\n        modul: b.wasm\n";
        let message = parse_err(text);
        assert!(
            message.starts_with(
                "conf/kubelisten.yaml:8:9: watches[0].listeners[1]: unknown field `modul`, expected one of"
            ),
            "{message}"
        );
        assert_err(
            "watches:\n  - name: a\n    labelselector: x\n",
            &[":3:5: watches[0]: unknown field `labelselector`"],
        );
        assert_err("watch: []\n", &[":1:1: unknown field `watch`"]);
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: a.wasm\n        limits: {call-timeout: 5, cpu: 2}\n",
            &[":6:", "watches[0].listeners[0].limits: unknown field `cpu`"],
        );
    }

    #[test]
    fn wrong_type() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: a.wasm\n        limits:\n          call-timeout: soon\n",
            &[":7:25: watches[0].listeners[0].limits.call-timeout:"],
        );
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: a.wasm\n        mode: sometimes\n",
            &[":6:", "watches[0].listeners[0].mode:", "sometimes"],
        );
        assert_err(
            "watches:\n  - name: a\n    namespaces: default\n",
            &[":3:17: watches[0].namespaces:"],
        );
        assert_err("watches: 5\n", &[":1:10: watches:"]);
    }

    #[test]
    fn missing_keys() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n",
            &[":2:5: watches[0].listeners:", "at least one listener"],
        );
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners: []\n",
            &[":4:16: watches[0].listeners:", "at least one listener"],
        );
        assert_err(
            "watches:\n  - crd: c.yaml\n    listeners: [{module: a.wasm}]\n",
            &[":2:5: watches[0]: missing field `name`"],
        );
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - name: x\n",
            &[":5:9: watches[0].listeners[0]: missing field `module`"],
        );
        assert_err(
            "watches:\n  - name: a\n    listeners: [{module: a.wasm}]\n",
            &[":2:5: watches[0]: no target"],
        );
        assert_err("watches: []\n", &[":1:10: watches: at least one watch"]);
        assert_err("# nothing\n", &["conf/kubelisten.yaml: the file is empty"]);
        assert_err("", &["the file is empty"]);
    }

    #[test]
    fn listener_names_must_be_qualified_names() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{name: my listener, module: x.wasm}]\n",
            &[":4:17: watches[0].listeners[0]: listener name \"my listener\" is not valid"],
        );
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{module: \"dir/x y.wasm\"}]\n",
            &["listener name \"x y\" is not valid"],
        );
    }

    #[test]
    fn a_rate_limit_of_zero_is_an_error() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: x.wasm\n        capabilities: {rateLimit: {qps: 0, burst: 5}}\n",
            &["watches[0].listeners[0].capabilities.rateLimit.qps: must be at least 1"],
        );
    }

    #[test]
    fn grants_that_would_match_nothing_are_errors_with_their_position() {
        let listener = |grant: &str| {
            format!(
                "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: x.wasm\n        capabilities:\n          grants:\n            - {grant}\n"
            )
        };
        for (grant, expected) in [
            (
                "{apiGroups: [''], resources: [pods], verbs: [get], namespaces: ['*']}",
                "watches[0].listeners[0].capabilities.grants[0].namespaces[0]: \"*\" in a list",
            ),
            (
                "{apiGroups: [''], resources: [pods], verbs: [get], namespaces: [team-a, event]}",
                "grants[0].namespaces[1]: \"event\" in a list",
            ),
            (
                "{apiGroups: [''], resources: [pods], verbs: [get], namespaces: [Team-A]}",
                "grants[0].namespaces[0]: namespace \"Team-A\" is not a namespace name",
            ),
            (
                "{apiGroups: [''], resources: [pods], verbs: [get], namespaces: []}",
                "grants[0].namespaces: must list at least one namespace",
            ),
            (
                "{apiGroups: [], resources: [pods], verbs: [get]}",
                "grants[0].apiGroups: must list at least one",
            ),
            (
                "{apiGroups: [''], resources: [], verbs: [get]}",
                "grants[0].resources: must list at least one",
            ),
            (
                "{apiGroups: [''], resources: [pods], verbs: []}",
                "grants[0].verbs: must list at least one",
            ),
        ] {
            assert_err(&listener(grant), &[expected, ":8:"]);
        }
    }

    #[test]
    fn limits_that_cannot_work_are_errors_with_their_position() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{module: x.wasm, limits: {memory-bytes: 0}}]\n",
            &[
                "watches[0].listeners[0].limits.memory-bytes",
                "must be at least 65536",
                ":4:",
            ],
        );
    }

    #[test]
    fn listener_names_are_unique_across_watches() {
        let text = "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{module: x.wasm}]\n  - name: b\n    crd: d.yaml\n    listeners:\n      - {name: y, module: y.wasm}\n      - {module: dir/x.wasm}\n";
        assert_err(
            text,
            &[
                ":9:9: watches[1].listeners[1]: listener name \"x\" is also used in watch \"a\" (line 4)",
            ],
        );
        let ok = "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{module: x.wasm}]\n  - name: b\n    crd: d.yaml\n    listeners: [{name: x-b, module: x.wasm}]\n";
        let config = parse(ok, Path::new("conf/kubelisten.yaml")).unwrap();
        assert_eq!(config.watches[1].listeners[0].name, "x-b");
    }

    #[test]
    fn duplicate_names() {
        let text = "watches:\n  - name: a\n    crd: c.yaml\n    listeners: [{module: x.wasm}]\n  - name: a\n    crd: d.yaml\n    listeners: [{module: x.wasm}]\n";
        assert_err(
            text,
            &[
                "conf/kubelisten.yaml:5:11: watches[1].name: duplicate watch name \"a\" (also at line 2)",
            ],
        );
        let text = "watches:\n  - name: a\n    crd: c.yaml\n    listeners:\n      - module: dir/x.wasm\n      - module: other/y.wasm\n      - name: x\n        module: y.wasm\n";
        assert_err(
            text,
            &[
                ":7:9: watches[0].listeners[2]: duplicate listener name \"x\"",
                "(also at line 5)",
            ],
        );
        // The same key twice in one mapping is a YAML error.
        assert_err(
            "watches:\n  - name: a\n    name: b\n",
            &[":3:5:", "duplicate mapping key"],
        );
    }

    #[test]
    fn exactly_one_target() {
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    resource: {version: v1, kind: Pod}\n    listeners: [{module: x.wasm}]\n",
            &[":4:15: watches[0].resource: several targets (crd, resource)"],
        );
        assert_err(
            "watches:\n  - name: a\n    crd: c.yaml\n    apiVersion: v1\n    kind: Pod\n    listeners: [{module: x.wasm}]\n",
            &[":4:17: watches[0].apiVersion: several targets (crd, apiVersion)"],
        );
        assert_err(
            "watches:\n  - name: a\n    kind: Pod\n    listeners: [{module: x.wasm}]\n",
            &[":3:11: watches[0].kind: `kind` needs `apiVersion`"],
        );
        assert_err(
            "watches:\n  - name: a\n    apiVersion: apps/v1\n    listeners: [{module: x.wasm}]\n",
            &[":3:17: watches[0].apiVersion: `apiVersion` needs `kind`"],
        );
    }

    #[test]
    fn resource_rules() {
        assert_err(
            "watches:\n  - name: a\n    resource: {version: v1, kind: \"\"}\n    listeners: [{module: x.wasm}]\n",
            &[":3:35: watches[0].resource.kind: must not be empty"],
        );
        assert_err(
            "watches:\n  - name: a\n    resource:\n      version: \"\"\n      kind: Pod\n    listeners: [{module: x.wasm}]\n",
            &[":4:16: watches[0].resource.version: must not be empty"],
        );
        assert_err(
            "watches:\n  - name: a\n    resource: {version: apps/v1, kind: Deployment}\n    listeners: [{module: x.wasm}]\n",
            &["watches[0].resource.version: \"apps/v1\" is not a version"],
        );
        assert_err(
            "watches:\n  - name: a\n    resource: {kind: Deployment}\n    listeners: [{module: x.wasm}]\n",
            &[":3:15: watches[0].resource: missing field `version`"],
        );
        assert_err(
            "watches:\n  - name: a\n    apiVersion: /v1\n    kind: Pod\n    listeners: [{module: x.wasm}]\n",
            &["watches[0].apiVersion: \"/v1\" is not an apiVersion"],
        );
        assert_err(
            "watches:\n  - name: a\n    apiVersion: v1\n    kind: Pod\n    namespaces: [x, x]\n    listeners: [{module: x.wasm}]\n",
            &[":5:21: watches[0].namespaces[1]: namespace \"x\" is listed twice"],
        );
        // A namespace that no namespace can be named: an error at its place, not an empty
        // watch or a request refused for good.
        assert_err(
            "watches:\n  - name: a\n    apiVersion: v1\n    kind: Pod\n    namespaces: [team-a, team_a]\n    listeners: [{module: x.wasm}]\n",
            &[":5:26: watches[0].namespaces[1]: namespace \"team_a\" is not a namespace name"],
        );
        assert_err(
            "watches:\n  - name: a\n    apiVersion: v1\n    kind: Pod\n    namespaces: [a/b]\n    listeners: [{module: x.wasm}]\n",
            &["watches[0].namespaces[0]: namespace \"a/b\" is not a namespace name"],
        );
        // Selectors are checked as the API server would, at their place.
        assert_err(
            "watches:\n  - name: a\n    apiVersion: v1\n    kind: Pod\n    labelSelector: app in web\n    listeners: [{module: x.wasm}]\n",
            &[":5:20: watches[0].labelSelector: `app in` needs a parenthesized list"],
        );
        assert_err(
            "watches:\n  - name: a\n    apiVersion: v1\n    kind: Pod\n    fieldSelector: spec.nodeName\n    listeners: [{module: x.wasm}]\n",
            &[":5:20: watches[0].fieldSelector: term \"spec.nodeName\" has no operator"],
        );
    }

    #[test]
    fn positions_and_paths() {
        let p = Position {
            file: "f.yaml".into(),
            line: 0,
            column: 0,
        };
        assert_eq!(p.to_string(), "f.yaml");
        assert_eq!(
            KeyPath::root().key("a").index(2).key("b").to_string(),
            "a[2].b"
        );
        let docs = yaml::split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n----\n");
        assert_eq!(
            docs,
            vec![
                (0, "a: 1\n"),
                (1, "---\nb: 2\n"),
                (3, "--- # c\nc: 3\n----\n")
            ]
        );
        assert_eq!(
            yaml::split_documents("---\na: 1\n"),
            vec![(0, "---\na: 1\n")]
        );
    }
}
