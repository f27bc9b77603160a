//! `kubelisten status`: the computed status of objects named by manifests (`-f`) or on the
//! command line (`-k kind/name`), either watched live until they all reach the wanted status
//! (the [`StatusWatcher`] as a command), or computed `--offline` from the manifests' own
//! content.
//!
//! Exit codes: 0 when every object has the wanted status; 1 on timeout, on a Failed object
//! (when waiting for Current), or on an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use kube::discovery::Scope;
use serde_json::{json, Value};

use crate::status::watcher::{discover, GroupKind, ScopeStrategy, WatchOptions};
use crate::status::{compute, ObjectIdentity, ResourceStatus, Status, StatusWatcher, WatchEvent};

/// Arguments of `kubelisten status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// A manifest file: multi-document YAML or JSON (a `List` is expanded); `-` reads stdin.
    /// Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        env = "KUBELISTEN_STATUS_FILES",
        value_delimiter = ','
    )]
    pub filenames: Vec<PathBuf>,
    /// An object as `kind[.group]/name` (e.g. `deployment/web`, `Widget.example.com/w`);
    /// repeatable. Live mode only.
    #[arg(
        short = 'k',
        long = "object",
        env = "KUBELISTEN_STATUS_OBJECTS",
        value_delimiter = ','
    )]
    pub objects: Vec<String>,
    /// Namespace of `-k` objects and of namespaced manifests without one (default: the
    /// kubeconfig context's namespace).
    #[arg(short = 'n', long, env = "KUBELISTEN_NAMESPACE")]
    pub namespace: Option<String>,
    /// The status to wait for.
    #[arg(long = "for", value_enum, default_value_t = WaitFor::Current, env = "KUBELISTEN_STATUS_FOR")]
    pub wait_for: WaitFor,
    /// How long to wait (e.g. `30s`, `2m`, `1m30s`; a bare number is seconds; 0 = forever).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "KUBELISTEN_STATUS_TIMEOUT")]
    pub timeout: Duration,
    /// How watches are scoped: one per namespace, cluster-wide, or automatic (cluster-wide
    /// when the objects span several namespaces).
    #[arg(long, value_enum, default_value_t = ScopeArg::Auto, env = "KUBELISTEN_STATUS_SCOPE")]
    pub scope: ScopeArg,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusOutput::Text, env = "KUBELISTEN_OUTPUT")]
    pub output: StatusOutput,
    /// Compute the status from the manifests' own content (status fields included), without
    /// a cluster.
    #[arg(long, env = "KUBELISTEN_STATUS_OFFLINE")]
    pub offline: bool,
}

/// The status `kubelisten status` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// Every object is Current.
    Current,
    /// Every object is Failed.
    Failed,
    /// Every object is gone (NotFound).
    Deleted,
}

impl WaitFor {
    /// The status every object must have.
    pub fn status(self) -> Status {
        match self {
            WaitFor::Current => Status::Current,
            WaitFor::Failed => Status::Failed,
            WaitFor::Deleted => Status::NotFound,
        }
    }
}

/// `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// [`ScopeStrategy::Automatic`].
    Auto,
    /// [`ScopeStrategy::Cluster`].
    Cluster,
    /// [`ScopeStrategy::Namespace`].
    Namespace,
}

impl From<ScopeArg> for ScopeStrategy {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Auto => ScopeStrategy::Automatic,
            ScopeArg::Cluster => ScopeStrategy::Cluster,
            ScopeArg::Namespace => ScopeStrategy::Namespace,
        }
    }
}

/// Output format of `kubelisten status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// An aligned table.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a duration flag is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. 30s, 2m, 1m30s, 500ms or a number of seconds)")]
pub struct ParseDurationError(pub String);

/// Parses `30s`, `2m`, `1h`, `500ms`, `1m30s`, or a bare number of seconds.
///
/// # Errors
/// Anything else.
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let bad = || ParseDurationError(text.to_owned());
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Runs `kubelisten status` from a synchronous `main`: offline directly, live on a new tokio
/// runtime with the default kube client (in-cluster config, else `KUBECONFIG` or
/// `~/.kube/config`). Writes to stdout.
///
/// # Errors
/// Unreadable or malformed manifests, no objects given, no cluster, a fatal watch error.
pub fn run_blocking(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.offline {
        return run_offline(&args, &mut std::io::stdin().lock(), &mut std::io::stdout());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

/// Runs `kubelisten status` (offline or live) with the default kube client, writing to
/// stdout.
///
/// # Errors
/// See [`run_blocking`].
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.offline {
        return run_offline(&args, &mut std::io::stdin().lock(), &mut std::io::stdout());
    }
    let client = crate::connect::client().await?;
    let mut stdout = std::io::stdout();
    run_live(client, &args, &mut std::io::stdin().lock(), &mut stdout).await
}

/// `kubelisten status --offline`: computes the status of every object in the manifests from
/// its own content and writes one line per object (`-o json`: one JSON object with `kind`,
/// `group`, `namespace`, `name`, `status`, `reason` and `message`). Exits 0 when every object
/// has the `--for` status, else 1.
///
/// # Errors
/// No `-f`, `-k` given, unreadable or malformed manifests, a write error.
pub fn run_offline(
    args: &StatusArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if !args.objects.is_empty() {
        bail!("--offline computes status from manifest content: use -f, not -k");
    }
    if args.filenames.is_empty() {
        bail!("--offline needs at least one -f FILE (or -f - for stdin)");
    }
    let documents = read_manifests(&args.filenames, stdin)?;
    let statuses: Vec<ResourceStatus> = documents
        .iter()
        .map(|doc| {
            let identity = ObjectIdentity::of(&doc.object);
            match compute(&doc.object) {
                Ok(result) => ResourceStatus::from_result(identity, &result),
                Err(err) => ResourceStatus::unknown(identity, &err),
            }
        })
        .collect();
    let table = Table::new(statuses.iter().map(|s| &s.identity), args.output);
    for status in &statuses {
        table.row(out, status, None)?;
    }
    out.flush().context("writing the output")?;
    let wanted = args.wait_for.status();
    Ok(if statuses.iter().all(|s| s.status == wanted) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `kubelisten status` against a cluster: watches the objects named by `-f`/`-k`, writes
/// every status change, and returns when all have the `--for` status (0), when one is
/// Failed while waiting for Current (1), or at the timeout (1); then writes one line per
/// object with its status, reason and message.
///
/// # Errors
/// Unreadable or malformed manifests, no objects, an unknown `-k` kind, a fatal watch error.
pub async fn run_live(
    client: kube::Client,
    args: &StatusArgs,
    stdin: &mut dyn Read,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    let ids = identities(&client, args, stdin).await?;
    if ids.is_empty() {
        bail!("no objects given: use -f FILE or -k kind/name");
    }
    let wanted = args.wait_for.status();
    tracing::debug!(objects = ids.len(), wanted = %wanted, "status watch");
    let watcher = StatusWatcher::with_options(
        client,
        WatchOptions {
            scope: args.scope.into(),
            ..WatchOptions::default()
        },
    );
    let mut stream = watcher.watch(ids.iter().cloned());
    let table = Table::new(ids.iter(), args.output);
    table.header(out)?;
    let mut current: BTreeMap<ObjectIdentity, Option<ResourceStatus>> =
        ids.iter().map(|id| (id.clone(), None)).collect();
    let deadline = deadline_after(args.timeout);
    let outcome = loop {
        if let Some(outcome) = settled(&current, args.wait_for) {
            break outcome;
        }
        let event = tokio::select! {
            event = stream.next() => event,
            () = sleep_until(deadline) => break Outcome::Timeout,
        };
        match event {
            Some(WatchEvent::Update(update)) => {
                let status = update.resource;
                let Some(slot) = current.get_mut(&status.identity) else {
                    continue;
                };
                let changed = slot.as_ref().is_none_or(|old| {
                    (old.status, &old.reason, &old.message)
                        != (status.status, &status.reason, &status.message)
                });
                if changed {
                    table.row(out, &status, Some("update"))?;
                }
                *slot = Some(status);
            }
            Some(WatchEvent::Sync) => {
                // Everything that exists has been listed: the rest does not exist.
                for (id, slot) in current.iter_mut() {
                    if slot.is_none() {
                        let status = ResourceStatus::not_found(id.clone());
                        table.row(out, &status, Some("update"))?;
                        *slot = Some(status);
                    }
                }
            }
            Some(WatchEvent::Error(err)) => break Outcome::Error(err.into()),
            None => break Outcome::Error(anyhow::anyhow!("the status watch ended")),
        }
    };
    table.summary(out, &current, wanted, &outcome, args.timeout)?;
    out.flush().context("writing the output")?;
    match outcome {
        Outcome::Done => Ok(ExitCode::SUCCESS),
        Outcome::Failed | Outcome::Timeout => Ok(ExitCode::FAILURE),
        Outcome::Error(err) => Err(err.context("watching status")),
    }
}

/// How a live status wait ended.
#[derive(Debug)]
enum Outcome {
    Done,
    Failed,
    Timeout,
    Error(anyhow::Error),
}

/// Done when every object has the wanted status; Failed when waiting for Current and one is
/// Failed. This is a wait, not cli-utils' `aggregate`: waiting for deletion, a Failed or Unknown
/// object keeps the wait going (it may still be deleted) until the timeout, where the
/// aggregate would report it at once.
fn settled(
    current: &BTreeMap<ObjectIdentity, Option<ResourceStatus>>,
    wait_for: WaitFor,
) -> Option<Outcome> {
    let wanted = wait_for.status();
    let statuses = current.values().map(|s| s.as_ref().map(|s| s.status));
    if statuses.clone().all(|s| s == Some(wanted)) {
        return Some(Outcome::Done);
    }
    if wait_for == WaitFor::Current && statuses.clone().any(|s| s == Some(Status::Failed)) {
        return Some(Outcome::Failed);
    }
    None
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// A manifest document and where it came from.
#[derive(Debug, Clone)]
struct Document {
    object: Value,
    source: String,
}

/// Reads every object of the manifests (`-` is `stdin`), expanding `List`s.
fn read_manifests(paths: &[PathBuf], stdin: &mut dyn Read) -> anyhow::Result<Vec<Document>> {
    let mut documents = Vec::new();
    for path in paths {
        let (text, name) = if path == Path::new("-") {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("reading manifests from stdin")?;
            (text, "<stdin>".to_owned())
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (text, path.display().to_string())
        };
        let values = parse_manifests(&text).with_context(|| format!("parsing {name}"))?;
        for (index, value) in values.into_iter().enumerate() {
            let source = format!("{name} document {}", index + 1);
            if !value.is_object() {
                bail!("{source} is not an object");
            }
            documents.push(Document {
                object: value,
                source,
            });
        }
    }
    Ok(documents)
}

/// The objects of a multi-document YAML or JSON text (concatenated JSON values are allowed);
/// `List`s (`kind: List` or `*List` with `items`) are expanded, empty documents skipped.
fn parse_manifests(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start();
    let values: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut values = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match value.context("invalid JSON")? {
                Value::Array(items) => values.extend(items),
                value => values.push(value),
            }
        }
        values
    } else {
        serde_saphyr::from_multiple::<Value>(text).context("invalid YAML")?
    };
    let mut objects = Vec::new();
    for value in values {
        if value.is_null() {
            continue;
        }
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
            && value.get("items").is_some_and(Value::is_array);
        if is_list {
            if let Some(Value::Array(items)) = value.get("items") {
                objects.extend(items.iter().filter(|i| !i.is_null()).cloned());
            }
        } else {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The identities to watch: the manifests' objects (namespaced ones without a namespace get
/// `-n` or the client's default namespace), then the `-k` objects; duplicates removed.
async fn identities(
    client: &kube::Client,
    args: &StatusArgs,
    stdin: &mut dyn Read,
) -> anyhow::Result<BTreeSet<ObjectIdentity>> {
    let documents = read_manifests(&args.filenames, stdin)?;
    let default_namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    // Scopes of kinds defined by CRDs in the manifests (the CRD may not be installed yet).
    let mut crd_scopes: HashMap<GroupKind, Scope> = HashMap::new();
    for doc in &documents {
        let o = &doc.object;
        if o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
            let group = o.pointer("/spec/group").and_then(Value::as_str);
            let kind = o.pointer("/spec/names/kind").and_then(Value::as_str);
            let scope = o.pointer("/spec/scope").and_then(Value::as_str);
            if let (Some(group), Some(kind)) = (group, kind) {
                let scope = if scope == Some("Cluster") {
                    Scope::Cluster
                } else {
                    Scope::Namespaced
                };
                let gk = GroupKind {
                    group: group.to_owned(),
                    kind: kind.to_owned(),
                };
                crd_scopes.insert(gk, scope);
            }
        }
    }
    let mut scopes: HashMap<GroupKind, Scope> = HashMap::new();
    let mut ids = BTreeSet::new();
    for doc in &documents {
        let mut id = ObjectIdentity::of(&doc.object);
        if id.kind.is_empty() {
            bail!("{} has no kind", doc.source);
        }
        if id.name.is_empty() {
            bail!("{} ({}) has no metadata.name", doc.source, id.kind);
        }
        // The scope decides the namespace, whatever the manifest says: a cluster-scoped object
        // with a `metadata.namespace` (Helm puts the release's on ClusterRoles) has none, as
        // the API server ignores it; a namespaced one without gets the default.
        let gk = GroupKind::of(&id);
        let scope = match scopes.get(&gk) {
            Some(scope) => scope.clone(),
            None => {
                let scope = match discover(client, &gk).await {
                    Ok(Some((_, scope))) => scope,
                    Ok(None) => crd_scopes.get(&gk).cloned().unwrap_or(Scope::Namespaced),
                    // An API that cannot be asked now (an aggregated API that is down): the
                    // manifest decides, as before scopes were looked up for every object.
                    Err(err) => {
                        tracing::warn!(kind = %gk, error = %format!("{err:#}"), "cannot discover the kind's scope; taking the manifest's namespace as given");
                        crd_scopes.get(&gk).cloned().unwrap_or(Scope::Namespaced)
                    }
                };
                scopes.insert(gk, scope.clone());
                scope
            }
        };
        match scope {
            Scope::Cluster => id.namespace.clear(),
            Scope::Namespaced if id.namespace.is_empty() => {
                id.namespace = default_namespace.clone();
            }
            Scope::Namespaced => {}
        }
        ids.insert(id);
    }
    for object in &args.objects {
        ids.insert(resolve_object_arg(client, object, &default_namespace).await?);
    }
    Ok(ids)
}

/// The first resource of any served group (kubectl's group order) that `matches`. An API group
/// that cannot be discovered (an aggregated API whose server is down, say metrics-server) is
/// skipped, as kubectl does, instead of failing the whole lookup: aggregated discovery (two
/// requests) first, then group by group.
async fn find_in_every_group(
    client: &kube::Client,
    matches: &dyn Fn(&kube::api::ApiResource) -> bool,
) -> anyhow::Result<Option<(kube::api::ApiResource, kube::discovery::ApiCapabilities)>> {
    if let Ok(discovery) = kube::Discovery::new(client.clone()).run_aggregated().await {
        return Ok(discovery
            .groups_alphabetical()
            .into_iter()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| matches(r)));
    }
    let mut names: Vec<String> = client
        .list_api_groups()
        .await
        .context("discovering the API server's groups")?
        .groups
        .into_iter()
        .map(|g| g.name)
        .collect();
    names.sort();
    names.insert(0, String::new());
    for name in names {
        match kube::discovery::group(client, &name).await {
            Ok(group) => {
                if let Some(found) = group
                    .recommended_resources()
                    .into_iter()
                    .find(|(r, _)| matches(r))
                {
                    return Ok(Some(found));
                }
            }
            Err(err) => {
                tracing::warn!(group = %name, error = %err, "skipping an API group that cannot be discovered")
            }
        }
    }
    Ok(None)
}

/// Resolves `kind[.group]/name` through discovery (kind or plural, any case). A kind with a
/// group that is not served yet is taken as given (namespaced).
async fn resolve_object_arg(
    client: &kube::Client,
    arg: &str,
    namespace: &str,
) -> anyhow::Result<ObjectIdentity> {
    let Some((kind, name)) = arg.split_once('/') else {
        bail!("invalid object {arg:?}: expected kind[.group]/name");
    };
    if kind.is_empty() || name.is_empty() || name.contains('/') {
        bail!("invalid object {arg:?}: expected kind[.group]/name");
    }
    let (kind, group) = match kind.split_once('.') {
        Some((kind, group)) => (kind, Some(group)),
        None => (kind, None),
    };
    let matches = |resource: &kube::api::ApiResource| {
        resource.kind.eq_ignore_ascii_case(kind) || resource.plural.eq_ignore_ascii_case(kind)
    };
    let found = match group {
        Some(group) => match kube::discovery::group(client, group).await {
            Ok(api_group) => api_group
                .recommended_resources()
                .into_iter()
                .find(|(r, _)| matches(r)),
            Err(kube::Error::Discovery(_)) => None,
            Err(err) => {
                return Err(err).with_context(|| format!("discovering the API group {group}"))
            }
        },
        None => find_in_every_group(client, &matches).await?,
    };
    let (group, kind, scope) = match (found, group) {
        (Some((resource, caps)), _) => (resource.group, resource.kind, caps.scope),
        (None, Some(group)) => (group.to_owned(), kind.to_owned(), Scope::Namespaced),
        (None, None) => bail!(
            "unknown kind {kind:?} in {arg:?} (if its CRD is not installed yet, give it as Kind.group/name)"
        ),
    };
    Ok(ObjectIdentity {
        group,
        kind,
        namespace: match scope {
            Scope::Namespaced => namespace.to_owned(),
            Scope::Cluster => String::new(),
        },
        name: name.to_owned(),
    })
}

/// Writes rows (text columns sized for the known identities, or JSON lines).
struct Table {
    format: StatusOutput,
    kind_width: usize,
    name_width: usize,
}

const STATUS_WIDTH: usize = 11;

fn kind_of(id: &ObjectIdentity) -> String {
    GroupKind::of(id).to_string()
}

fn name_of(id: &ObjectIdentity) -> String {
    if id.namespace.is_empty() {
        id.name.clone()
    } else {
        format!("{}/{}", id.namespace, id.name)
    }
}

impl Table {
    fn new<'a>(ids: impl Iterator<Item = &'a ObjectIdentity>, format: StatusOutput) -> Self {
        let (mut kind_width, mut name_width) = ("KIND".len(), "NAME".len());
        for id in ids {
            kind_width = kind_width.max(kind_of(id).len());
            name_width = name_width.max(name_of(id).len());
        }
        Table {
            format,
            kind_width,
            name_width,
        }
    }

    fn header(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        if self.format == StatusOutput::Text {
            writeln!(
                out,
                "{:<kw$}  {:<nw$}  {:<STATUS_WIDTH$}  REASON / MESSAGE",
                "KIND",
                "NAME",
                "STATUS",
                kw = self.kind_width,
                nw = self.name_width
            )
            .context("writing the output")?;
        }
        Ok(())
    }

    /// One row; `event` is the JSON `event` field (none offline).
    fn row(
        &self,
        out: &mut dyn Write,
        status: &ResourceStatus,
        event: Option<&str>,
    ) -> anyhow::Result<()> {
        match self.format {
            StatusOutput::Text => {
                let reason = match (status.reason.as_str(), status.message.as_str()) {
                    ("", message) => message.to_owned(),
                    (reason, "") => reason.to_owned(),
                    (reason, message) => format!("{reason}: {message}"),
                };
                writeln!(
                    out,
                    "{:<kw$}  {:<nw$}  {:<STATUS_WIDTH$}  {}",
                    kind_of(&status.identity),
                    name_of(&status.identity),
                    status.status.as_str(),
                    one_line(&reason),
                    kw = self.kind_width,
                    nw = self.name_width
                )
            }
            StatusOutput::Json => {
                let mut line = json_status(status);
                if let (Some(event), Some(map)) = (event, line.as_object_mut()) {
                    map.insert("event".into(), Value::String(event.to_owned()));
                }
                writeln!(out, "{line}")
            }
        }
        .context("writing the output")
    }

    fn summary(
        &self,
        out: &mut dyn Write,
        current: &BTreeMap<ObjectIdentity, Option<ResourceStatus>>,
        wanted: Status,
        outcome: &Outcome,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let total = current.len();
        let reached = current
            .values()
            .filter(|s| s.as_ref().is_some_and(|s| s.status == wanted))
            .count();
        let headline = match outcome {
            Outcome::Done => format!("all {total} objects are {wanted}"),
            Outcome::Failed => {
                let failed = current
                    .values()
                    .filter(|s| s.as_ref().is_some_and(|s| s.status == Status::Failed))
                    .count();
                format!("{failed} of {total} objects failed")
            }
            Outcome::Timeout => {
                format!("timed out after {timeout:?}: {reached} of {total} objects are {wanted}")
            }
            Outcome::Error(err) => format!("status watch failed: {err:#}"),
        };
        let final_status = |id: &ObjectIdentity, s: &Option<ResourceStatus>| {
            s.clone().unwrap_or_else(|| ResourceStatus {
                identity: id.clone(),
                status: Status::Unknown,
                reason: String::new(),
                message: "No status reported yet".to_owned(),
                error: None,
                generated: Vec::new(),
            })
        };
        match self.format {
            StatusOutput::Text => {
                writeln!(out, "{headline}").context("writing the output")?;
                for (id, status) in current {
                    self.row(out, &final_status(id, status), None)?;
                }
            }
            StatusOutput::Json => {
                for (id, status) in current {
                    self.row(out, &final_status(id, status), Some("result"))?;
                }
                let outcome_name = match outcome {
                    Outcome::Done => "done",
                    Outcome::Failed => "failed",
                    Outcome::Timeout => "timeout",
                    Outcome::Error(_) => "error",
                };
                let line = json!({"event": "summary", "outcome": outcome_name,
                    "wanted": wanted.as_str(), "reached": reached, "total": total,
                    "message": headline});
                writeln!(out, "{line}").context("writing the output")?;
            }
        }
        Ok(())
    }
}

fn json_status(status: &ResourceStatus) -> Value {
    let id = &status.identity;
    json!({
        "kind": id.kind,
        "group": id.group,
        "namespace": id.namespace,
        "name": id.name,
        "status": status.status.as_str(),
        "reason": status.reason,
        "message": status.message,
    })
}

/// `text` on one line (newlines become spaces).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// When a wait of `timeout` ends: `None` for 0 (no timeout) and for a timeout too long to add
/// to the clock (as good as none).
fn deadline_after(timeout: Duration) -> Option<tokio::time::Instant> {
    if timeout.is_zero() {
        return None;
    }
    tokio::time::Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }

    fn args(argv: &[&str]) -> StatusArgs {
        let mut full = vec!["status"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().args
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "1.5s", "-1s", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // A timeout that overflows the clock is no timeout, not a panic.
        let huge = parse_duration("10000000000000000000").unwrap();
        assert_eq!(deadline_after(huge), None);
        assert_eq!(deadline_after(Duration::ZERO), None);
        assert!(deadline_after(Duration::from_secs(1)).is_some());
    }

    #[test]
    fn flags_and_defaults() {
        let a = args(&["-f", "a.yaml", "-f", "-"]);
        assert_eq!(a.filenames, [PathBuf::from("a.yaml"), PathBuf::from("-")]);
        assert_eq!(a.wait_for, WaitFor::Current);
        assert_eq!(a.timeout, Duration::from_secs(300));
        assert_eq!(a.scope, ScopeArg::Auto);
        assert_eq!(a.output, StatusOutput::Text);
        assert!(!a.offline);
        let a = args(&[
            "-k",
            "deploy/web",
            "-n",
            "ns",
            "--for",
            "deleted",
            "--timeout",
            "2m",
            "--scope",
            "cluster",
            "-o",
            "json",
        ]);
        assert_eq!(a.objects, ["deploy/web"]);
        assert_eq!(a.namespace.as_deref(), Some("ns"));
        assert_eq!(a.wait_for.status(), Status::NotFound);
        assert_eq!(a.timeout, Duration::from_secs(120));
        assert_eq!(ScopeStrategy::from(a.scope), ScopeStrategy::Cluster);
        assert_eq!(a.output, StatusOutput::Json);
    }

    #[test]
    fn manifests_yaml_json_and_lists() {
        let yaml = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n";
        let objects = parse_manifests(yaml).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| o["kind"].clone()).collect();
        assert_eq!(kinds, [json!("ConfigMap"), json!("Secret")]);
        let json_text = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}
            [{"apiVersion":"v1","kind":"Secret","metadata":{"name":"b"}}]"#;
        assert_eq!(parse_manifests(json_text).unwrap().len(), 2);
        assert!(parse_manifests("{").is_err());
        assert!(parse_manifests("a: [").is_err());
    }

    #[test]
    fn offline_text_and_json() {
        let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns, generation: 1}\nspec: {replicas: 2}\nstatus: {observedGeneration: 1, replicas: 1}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns}\n";
        let mut out = Vec::new();
        let code = run_offline(
            &args(&["--offline", "-f", "-"]),
            &mut input.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0]
                .starts_with("Deployment.apps  ns/web  InProgress   LessReplicas: Replicas: 1/2"),
            "{text}"
        );
        assert!(
            lines[1].contains("ConfigMap")
                && lines[1].contains("Current")
                && lines[1].contains("Resource is always ready"),
            "{text}"
        );

        let mut out = Vec::new();
        run_offline(
            &args(&["--offline", "-f", "-", "-o", "json"]),
            &mut input.as_bytes(),
            &mut out,
        )
        .unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["status"], "InProgress");
        assert_eq!(lines[0]["reason"], "LessReplicas");
        assert_eq!(lines[0]["message"], "Replicas: 1/2");
        assert_eq!(lines[1]["status"], "Current");
        assert_eq!(lines[1]["reason"], "");
    }

    #[test]
    fn offline_all_current_exits_zero_and_errors_are_unknown() {
        let input = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"}}";
        let mut out = Vec::new();
        let code = run_offline(
            &args(&["--offline", "-f", "-"]),
            &mut input.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let bad = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"},\"status\":{\"phase\":\"Weird\"}}";
        let mut out = Vec::new();
        let code = run_offline(
            &args(&["--offline", "-f", "-"]),
            &mut bad.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Unknown") && text.contains("unknown phase Weird"),
            "{text}"
        );
        assert!(run_offline(&args(&["--offline"]), &mut "".as_bytes(), &mut Vec::new()).is_err());
        assert!(run_offline(
            &args(&["--offline", "-k", "a/b"]),
            &mut "".as_bytes(),
            &mut Vec::new()
        )
        .is_err());
        assert!(run_offline(
            &args(&["--offline", "-f", "-"]),
            &mut "- 1".as_bytes(),
            &mut Vec::new()
        )
        .is_err());
    }

    #[test]
    fn settling() {
        let id = |n: &str| ObjectIdentity {
            kind: "ConfigMap".into(),
            name: n.into(),
            ..Default::default()
        };
        let with = |n: &str, s: Status| {
            let mut r = ResourceStatus::not_found(id(n));
            r.status = s;
            Some(r)
        };
        let mut current = BTreeMap::from([(id("a"), with("a", Status::Current)), (id("b"), None)]);
        assert!(settled(&current, WaitFor::Current).is_none());
        current.insert(id("b"), with("b", Status::Current));
        assert!(matches!(
            settled(&current, WaitFor::Current),
            Some(Outcome::Done)
        ));
        current.insert(id("b"), with("b", Status::Failed));
        assert!(matches!(
            settled(&current, WaitFor::Current),
            Some(Outcome::Failed)
        ));
        assert!(settled(&current, WaitFor::Failed).is_none());
        assert!(settled(&current, WaitFor::Deleted).is_none());
    }
}
