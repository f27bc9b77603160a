//! The event model shared by the cluster watch and `replay`: [`ResourceEvent`], its metadata,
//! and the [`Tracker`] that turns raw watch events into create/update/delete with the previous
//! object and drops duplicate deliveries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::runtime::bindings::kubelisten::listener::cluster::ObjectRef;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Created (or found by an initial list or relist).
    Create,
    /// Changed.
    Update,
    /// Deleted.
    Delete,
}

impl EventKind {
    /// `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        }
    }
}

/// Object metadata parsed from the JSON by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, absent for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.uid` (empty when absent, e.g. in hand-written replay files).
    pub uid: String,
    /// `metadata.resourceVersion` (empty when absent).
    pub resource_version: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.labels`.
    pub labels: Vec<(String, String)>,
    /// `metadata.annotations`.
    pub annotations: Vec<(String, String)>,
}

/// Why an object's JSON could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The text is not JSON.
    #[error("object is not valid JSON: {0}")]
    NotJson(String),
    /// A required field is missing or has the wrong type.
    #[error("object field {field}: {problem}")]
    BadField {
        /// JSON path of the field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

impl ObjectMeta {
    /// Parses the metadata of an object given as JSON text.
    ///
    /// # Errors
    /// [`EventError`] naming the missing or mistyped field.
    pub fn from_json(raw: &str) -> Result<Self, EventError> {
        let value: Value =
            serde_json::from_str(raw).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Parses the metadata of an already parsed object.
    ///
    /// # Errors
    /// [`EventError`] naming the missing or mistyped field.
    pub fn from_value(value: &Value) -> Result<Self, EventError> {
        let text = |v: Option<&Value>,
                    field: &'static str,
                    required: bool|
         -> Result<Option<String>, EventError> {
            match v {
                None | Some(Value::Null) if !required => Ok(None),
                None | Some(Value::Null) => Err(EventError::BadField {
                    field,
                    problem: "missing",
                }),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(EventError::BadField {
                    field,
                    problem: "not a string",
                }),
            }
        };
        if !value.is_object() {
            return Err(EventError::BadField {
                field: "(object)",
                problem: "not a JSON object",
            });
        }
        let meta = value.get("metadata").unwrap_or(&Value::Null);
        if !meta.is_object() {
            return Err(EventError::BadField {
                field: "metadata",
                problem: "missing or not an object",
            });
        }
        let generation = match meta.get("generation") {
            None | Some(Value::Null) => None,
            Some(g) => Some(g.as_i64().ok_or(EventError::BadField {
                field: "metadata.generation",
                problem: "not an integer",
            })?),
        };
        Ok(Self {
            api_version: text(value.get("apiVersion"), "apiVersion", true)?.unwrap_or_default(),
            kind: text(value.get("kind"), "kind", true)?.unwrap_or_default(),
            name: text(meta.get("name"), "metadata.name", true)?.unwrap_or_default(),
            namespace: text(meta.get("namespace"), "metadata.namespace", false)?,
            uid: text(meta.get("uid"), "metadata.uid", false)?.unwrap_or_default(),
            resource_version: text(
                meta.get("resourceVersion"),
                "metadata.resourceVersion",
                false,
            )?
            .unwrap_or_default(),
            generation,
            labels: string_map(meta.get("labels"), "metadata.labels")?,
            annotations: string_map(meta.get("annotations"), "metadata.annotations")?,
        })
    }

    /// The uid of this object if `about` names it (same group, kind, namespace and name; the
    /// version may differ), `None` otherwise or when the uid is unknown: `record-event` about
    /// the event's own object gets the uid in the Event's `regarding`, which `kubectl describe`
    /// needs to list the Event.
    pub fn uid_of(&self, about: &ObjectRef) -> Option<&str> {
        fn group(api_version: &str) -> &str {
            api_version.rsplit_once('/').map_or("", |(g, _)| g)
        }
        (!self.uid.is_empty()
            && about.name == self.name
            && about.kind == self.kind
            && about.namespace == self.namespace
            && group(&about.api_version) == group(&self.api_version))
        .then_some(self.uid.as_str())
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn object_ref(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

fn string_map(v: Option<&Value>, field: &'static str) -> Result<Vec<(String, String)>, EventError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(EventError::BadField {
                    field,
                    problem: "a value is not a string",
                }),
            })
            .collect(),
        Some(_) => Err(EventError::BadField {
            field,
            problem: "not an object",
        }),
    }
}

/// One event for the listener chain.
#[derive(Debug, Clone)]
pub struct ResourceEvent {
    /// What happened.
    pub kind: EventKind,
    /// The object as JSON text, as the API server sent it.
    pub object: Arc<str>,
    /// For updates, the previous object.
    pub old_object: Option<Arc<str>>,
    /// Parsed metadata of `object`, shared (retries, merged events and a call's `record-event`
    /// uid lookup hold it without copying).
    pub meta: Arc<ObjectMeta>,
    /// True when the object came from an initial list or relist.
    pub initial: bool,
    /// The object's computed status (kstatus rules).
    pub status: ObjectStatus,
    /// The names of the only listeners this event is for, `None` for the whole chain. Set on
    /// the catch-up creates a listener added to a running chain gets for the objects that
    /// already exist ([`Tracker::snapshot`]); their `chain_generation` is the one the listeners
    /// joined at.
    pub only: Option<Arc<[Arc<str>]>>,
    /// The chain generation its watch task had caught up with when it read the event: listeners
    /// that joined the chain later are not called with it (their catch-up `create` covers the
    /// object). 0 outside a running watch; see
    /// [`ChainSlot::set`](crate::dispatch::ChainSlot::set).
    pub chain_generation: u64,
}

impl ResourceEvent {
    /// A `kind` event for `object`: no previous object, not `initial`, for the whole chain.
    pub fn new(kind: EventKind, object: Arc<str>, meta: ObjectMeta, status: ObjectStatus) -> Self {
        Self {
            kind,
            object,
            old_object: None,
            meta: Arc::new(meta),
            initial: false,
            status,
            only: None,
            chain_generation: 0,
        }
    }
}

/// The kstatus verdict on an object, as delivered with every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    /// The status.
    pub status: crate::status::Status,
    /// Its explanation.
    pub message: String,
}

impl Default for ObjectStatus {
    fn default() -> Self {
        Self {
            status: crate::status::Status::Unknown,
            message: String::new(),
        }
    }
}

impl ObjectStatus {
    /// Computes the status of a parsed object; a malformed status field gives `Unknown` with
    /// the error as message.
    pub fn of(object: &Value) -> Self {
        match crate::status::compute(object) {
            Ok(result) => Self {
                status: result.status,
                message: result.message,
            },
            Err(err) => Self {
                status: crate::status::Status::Unknown,
                message: err.to_string(),
            },
        }
    }
}

/// A watch failure passed to every listener's `error` export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchErrorInfo {
    /// HTTP-like status code (410 when the resourceVersion expired).
    pub code: u16,
    /// Machine-readable reason, e.g. `Expired`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl WatchErrorInfo {
    /// Reads a `Status` object (`{"code":410,"reason":"Expired","message":"..."}`), tolerating
    /// missing fields.
    pub fn from_status(status: &Value) -> Self {
        Self {
            code: status
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500),
            reason: status
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
                .to_string(),
            message: status
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// A watch event before the event model is applied: `ADDED`, `MODIFIED` or `DELETED` and the
/// object's JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

/// Applies the event model: remembers the last state of every object (by uid, else
/// namespace/name) so updates carry the previous object and deletes the last known state, turns
/// an `ADDED` for a known object into an update, and drops a delivery whose resourceVersion was
/// already seen for that object.
///
/// A (re)list goes through [`Tracker::relist`]: objects known before but absent from the list
/// become deletes carrying their last known state, then listed objects become creates (new),
/// updates (changed) or nothing (unchanged), all `initial`. So no event is lost or invented
/// across a gap in the watch.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<String, (String, Arc<str>)>,
    /// Bytes of the object texts in `seen`.
    bytes: usize,
}

/// Metadata and status of an object text the tracker kept (to replay it as a delete or a
/// catch-up create).
fn parse_known(object: &str) -> Result<(ObjectMeta, ObjectStatus), EventError> {
    let value =
        serde_json::from_str::<Value>(object).map_err(|e| EventError::NotJson(e.to_string()))?;
    Ok((ObjectMeta::from_value(&value)?, ObjectStatus::of(&value)))
}

/// The tracker's key of an object: its uid, else `namespace/name`.
fn key_of(meta: &ObjectMeta) -> String {
    if meta.uid.is_empty() {
        meta.object_ref()
    } else {
        meta.uid.clone()
    }
}

/// The items of a list that could not be read, for [`Tracker::relist`].
#[derive(Debug, Default)]
pub struct Unreadable {
    /// The tracker keys of those whose uid or name could be read.
    keys: HashSet<String>,
    /// Whether one of them could not even be named.
    unnamed: bool,
}

impl Unreadable {
    /// Notes a listed item that could not be read, by the tracker key its metadata still gives
    /// (its uid, else `namespace/name`), if any.
    pub fn note(&mut self, raw: &str) {
        let value = serde_json::from_str::<Value>(raw).unwrap_or_default();
        let field = |name: &str| {
            value
                .pointer(&format!("/metadata/{name}"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let key = match (field("uid"), field("name"), field("namespace")) {
            (Some(uid), _, _) => Some(uid.to_string()),
            (None, Some(name), Some(namespace)) => Some(format!("{namespace}/{name}")),
            (None, Some(name), None) => Some(name.to_string()),
            (None, None, _) => None,
        };
        match key {
            Some(key) => {
                self.keys.insert(key);
            }
            None => self.unnamed = true,
        }
    }

    /// How many items were noted with a key, and whether one had none.
    pub fn count(&self) -> (usize, bool) {
        (self.keys.len(), self.unnamed)
    }

    /// Whether the object known under `key` must be kept by a relist.
    fn keeps(&self, key: &str) -> bool {
        self.unnamed || self.keys.contains(key)
    }
}

impl Tracker {
    /// Turns one raw watch event into a [`ResourceEvent`], or `None` for a duplicate.
    pub fn apply(
        &mut self,
        ty: WatchType,
        object: Arc<str>,
        meta: ObjectMeta,
        status: ObjectStatus,
        initial: bool,
    ) -> Option<ResourceEvent> {
        let key = key_of(&meta);
        let previous = self.seen.get(&key);
        if let Some((rv, _)) = previous {
            if !rv.is_empty() && *rv == meta.resource_version {
                return None;
            }
        }
        let old_object = previous.map(|(_, obj)| obj.clone());
        let kind = match ty {
            WatchType::Deleted => {
                self.forget(&key);
                EventKind::Delete
            }
            WatchType::Added | WatchType::Modified => {
                self.bytes += object.len();
                if let Some((_, replaced)) = self
                    .seen
                    .insert(key, (meta.resource_version.clone(), object.clone()))
                {
                    self.bytes -= replaced.len();
                }
                if old_object.is_some() {
                    EventKind::Update
                } else {
                    EventKind::Create
                }
            }
        };
        Some(ResourceEvent {
            old_object: old_object.filter(|_| kind == EventKind::Update),
            initial,
            ..ResourceEvent::new(kind, object, meta, status)
        })
    }

    /// Applies a complete (re)list and returns its events, all `initial`: first a delete for
    /// every object known before and absent from the list (with its last known state), then a
    /// create or update for every listed object that is new or changed.
    ///
    /// Deletes come first so that an object deleted and re-created under the same name during
    /// the gap is delivered as the old object's delete, then the new object's create, the order
    /// in which they happened. Dispatch queues are per `namespace/name`, so a listener that owns
    /// children by name never sees the new object before the old one is gone.
    ///
    /// A listed item the watch could not read (`unreadable`) is not taken for gone: the object
    /// it names keeps its last known state and no delete is reported for it (a false delete
    /// would have listeners tear down what still exists). When not even its name can be read,
    /// no object absent from the list is reported deleted this time; a later relist reports them.
    pub fn relist(
        &mut self,
        listed: Vec<(Arc<str>, ObjectMeta, ObjectStatus)>,
        unreadable: &Unreadable,
    ) -> Vec<ResourceEvent> {
        let present: HashSet<String> = listed.iter().map(|(_, meta, _)| key_of(meta)).collect();
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !present.contains(*k) && !unreadable.keeps(k))
            .cloned()
            .collect();
        let mut events = Vec::with_capacity(gone.len() + listed.len());
        for key in gone {
            let Some(object) = self.forget(&key) else {
                continue;
            };
            match parse_known(&object) {
                Ok((meta, status)) => events.push(ResourceEvent {
                    initial: true,
                    ..ResourceEvent::new(EventKind::Delete, object, meta, status)
                }),
                Err(err) => {
                    tracing::warn!(object = key, error = %err, "cannot report the deletion of an unreadable object")
                }
            }
        }
        for (object, meta, status) in listed {
            events.extend(self.apply(WatchType::Added, object, meta, status, true));
        }
        events
    }

    /// A `create` (marked `initial`) of every object known now, for the listeners named in
    /// `only`, which joined the chain at `generation`: what listeners added to a running chain
    /// get so that they learn of the objects that existed before them, as if they had been
    /// there at the start.
    pub fn snapshot(&self, only: &Arc<[Arc<str>]>, generation: u64) -> Vec<ResourceEvent> {
        let mut events = Vec::with_capacity(self.seen.len());
        for (key, (_, object)) in &self.seen {
            match parse_known(object) {
                Ok((meta, status)) => events.push(ResourceEvent {
                    initial: true,
                    only: Some(only.clone()),
                    chain_generation: generation,
                    ..ResourceEvent::new(EventKind::Create, object.clone(), meta, status)
                }),
                Err(err) => {
                    tracing::warn!(object = key, error = %err, "cannot replay an unreadable object to a new listener")
                }
            }
        }
        events
    }

    /// Number of objects currently known.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Bytes of the object texts kept (the JSON the API server sent).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the object known under `key`; returns its last text.
    fn forget(&mut self, key: &str) -> Option<Arc<str>> {
        let (_, object) = self.seen.remove(key)?;
        self.bytes -= object.len();
        Some(object)
    }

    /// Whether no object is known.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(rv: &str, extra: &str) -> (Arc<str>, ObjectMeta) {
        let raw = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"a","namespace":"ns","uid":"u1","resourceVersion":"{rv}","labels":{{"x":"y"}}}}{extra}}}"#
        );
        let meta = ObjectMeta::from_json(&raw).unwrap();
        (Arc::from(raw), meta)
    }

    #[test]
    fn a_snapshot_creates_every_known_object_for_the_named_listeners() {
        let mut t = Tracker::default();
        let (o, m) = obj("7", "");
        t.apply(WatchType::Added, o, m, ObjectStatus::default(), false);
        let (o, m) = obj("8", "");
        t.apply(WatchType::Modified, o, m, ObjectStatus::default(), false);
        let only: Arc<[Arc<str>]> = Arc::from(vec![Arc::<str>::from("late")]);
        let events = t.snapshot(&only, 3);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!((e.kind, e.initial), (EventKind::Create, true));
        assert_eq!(e.meta.resource_version, "8", "the latest state");
        assert_eq!(e.only.as_deref(), Some(&only[..]));
        assert_eq!(e.chain_generation, 3);
        assert!(e.old_object.is_none());
    }

    #[test]
    fn parses_metadata() {
        let (_, m) = obj("7", "");
        assert_eq!(m.object_ref(), "ns/a");
        assert_eq!(m.labels, vec![("x".to_string(), "y".to_string())]);
        assert_eq!(m.resource_version, "7");
        assert!(matches!(
            ObjectMeta::from_json(r#"{"apiVersion":"v1","kind":"X","metadata":{}}"#),
            Err(EventError::BadField {
                field: "metadata.name",
                ..
            })
        ));
        assert!(matches!(
            ObjectMeta::from_json("{"),
            Err(EventError::NotJson(_))
        ));
        assert!(matches!(
            ObjectMeta::from_json(
                r#"{"apiVersion":"v1","kind":"X","metadata":{"name":"a","labels":{"a":1}}}"#
            ),
            Err(EventError::BadField {
                field: "metadata.labels",
                ..
            })
        ));
    }

    #[test]
    fn tracks_old_objects_and_drops_duplicates() {
        let mut t = Tracker::default();
        let (o1, m1) = obj("1", "");
        let e = t
            .apply(
                WatchType::Added,
                o1.clone(),
                m1.clone(),
                ObjectStatus::default(),
                false,
            )
            .unwrap();
        assert_eq!((e.kind, e.old_object.is_none()), (EventKind::Create, true));
        assert!(
            t.apply(
                WatchType::Added,
                o1.clone(),
                m1,
                ObjectStatus::default(),
                false
            )
            .is_none(),
            "same rv twice"
        );
        let (o2, m2) = obj("2", r#","data":{"k":"v"}"#);
        let e = t
            .apply(
                WatchType::Modified,
                o2.clone(),
                m2,
                ObjectStatus::default(),
                false,
            )
            .unwrap();
        assert_eq!(e.kind, EventKind::Update);
        assert_eq!(e.old_object.as_deref(), Some(&*o1));
        let (o3, m3) = obj("3", "");
        let e = t
            .apply(WatchType::Deleted, o3, m3, ObjectStatus::default(), false)
            .unwrap();
        assert_eq!((e.kind, e.old_object), (EventKind::Delete, None));
        assert!(t.is_empty());
    }

    #[test]
    fn relist_diffs_against_what_was_seen() {
        let mut t = Tracker::default();
        let mk = |name: &str, rv: &str| {
            let raw = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","resourceVersion":"{rv}"}}}}"#
            );
            let meta = ObjectMeta::from_json(&raw).unwrap();
            (Arc::<str>::from(raw), meta)
        };
        let listed = |items: &[(&str, &str)]| -> Vec<_> {
            items
                .iter()
                .map(|(name, rv)| {
                    let (o, m) = mk(name, rv);
                    (o, m, ObjectStatus::default())
                })
                .collect()
        };
        let first = t.relist(
            listed(&[("a", "1"), ("b", "2"), ("c", "3")]),
            &Unreadable::default(),
        );
        assert_eq!(first.len(), 3);
        assert!(first
            .iter()
            .all(|e| (e.kind, e.initial) == (EventKind::Create, true)));
        // Gap: a unchanged, b changed, c deleted, d created.
        let events = t.relist(
            listed(&[("a", "1"), ("b", "5"), ("d", "6")]),
            &Unreadable::default(),
        );
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.meta.name.as_str(), e.initial))
            .collect();
        assert_eq!(
            summary,
            vec![
                (EventKind::Delete, "c", true),
                (EventKind::Update, "b", true),
                (EventKind::Create, "d", true),
            ]
        );
        assert!(events[0].object.contains(r#""resourceVersion":"3""#));
        let old = events[1].old_object.as_deref().unwrap();
        assert!(old.contains(r#""resourceVersion":"2""#));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn relist_delivers_a_recreated_names_delete_before_its_create() {
        let mut t = Tracker::default();
        let mk = |uid: &str, rv: &str| {
            let raw = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"x","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}"}}}}"#
            );
            let meta = ObjectMeta::from_json(&raw).unwrap();
            (Arc::<str>::from(raw), meta, ObjectStatus::default())
        };
        t.relist(vec![mk("old", "1")], &Unreadable::default());
        // Gap: ns/x deleted and created again (a new uid).
        let events = t.relist(vec![mk("new", "9")], &Unreadable::default());
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.meta.uid.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![(EventKind::Delete, "old"), (EventKind::Create, "new")]
        );
    }

    #[test]
    fn relist_keeps_what_it_could_not_read() {
        let mk = |name: &str, rv: &str| {
            let raw = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","resourceVersion":"{rv}"}}}}"#
            );
            let meta = ObjectMeta::from_json(&raw).unwrap();
            (Arc::<str>::from(raw), meta, ObjectStatus::default())
        };
        let mut t = Tracker::default();
        t.relist(
            vec![mk("a", "1"), mk("b", "2"), mk("c", "3")],
            &Unreadable::default(),
        );
        // b is listed but unreadable (its labels are not strings); c is really gone.
        let mut unreadable = Unreadable::default();
        unreadable
            .note(r#"{"metadata":{"name":"b","namespace":"ns","uid":"u-b","labels":{"x":1}}}"#);
        assert_eq!(unreadable.count(), (1, false));
        let events = t.relist(vec![mk("a", "1")], &unreadable);
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.meta.name.as_str()))
            .collect();
        assert_eq!(summary, vec![(EventKind::Delete, "c")]);
        assert_eq!(t.len(), 2, "b is still known");
        // An item without even a name: nothing absent is taken for gone this time ...
        let mut unnamed = Unreadable::default();
        unnamed.note("[1, 2]");
        assert_eq!(unnamed.count(), (0, true));
        assert!(t.relist(vec![mk("a", "1")], &unnamed).is_empty());
        assert_eq!(t.len(), 2);
        // ... and the next readable list reports b's delete with its last known state.
        let events = t.relist(vec![mk("a", "1")], &Unreadable::default());
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].meta.name.as_str()),
            (EventKind::Delete, "b")
        );
        assert!(events[0].object.contains(r#""resourceVersion":"2""#));
    }

    #[test]
    fn the_tracker_counts_the_bytes_it_keeps() {
        let mk = |name: &str, uid: &str, rv: &str, pad: usize| {
            let raw = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}"}},"data":{{"p":"{}"}}}}"#,
                "x".repeat(pad)
            );
            let meta = ObjectMeta::from_json(&raw).unwrap();
            (Arc::<str>::from(raw), meta)
        };
        let mut t = Tracker::default();
        let apply = |t: &mut Tracker, ty, (object, meta): (Arc<str>, ObjectMeta)| {
            let len = object.len();
            t.apply(ty, object, meta, ObjectStatus::default(), false);
            len
        };
        let a1 = apply(&mut t, WatchType::Added, mk("a", "ua", "1", 10));
        let b1 = apply(&mut t, WatchType::Added, mk("b", "ub", "2", 20));
        assert_eq!((t.len(), t.bytes()), (2, a1 + b1));
        let a2 = apply(&mut t, WatchType::Modified, mk("a", "ua", "3", 500));
        assert_eq!(
            (t.len(), t.bytes()),
            (2, a2 + b1),
            "the new text replaces the old"
        );
        apply(&mut t, WatchType::Deleted, mk("b", "ub", "4", 20));
        assert_eq!((t.len(), t.bytes()), (1, a2));
        let (c, c_meta) = mk("c", "uc", "5", 7);
        let c_len = c.len();
        t.relist(
            vec![(c, c_meta, ObjectStatus::default())],
            &Unreadable::default(),
        );
        assert_eq!(
            (t.len(), t.bytes()),
            (1, c_len),
            "a relist drops what is gone"
        );
    }

    #[test]
    fn the_uid_is_known_for_the_events_own_object_only() {
        let object = ObjectMeta::from_json(
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"ns","uid":"uid-web"}}"#,
        )
        .unwrap();
        let about = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("ns".into()),
            name: "web".into(),
        };
        assert_eq!(object.uid_of(&about), Some("uid-web"));
        let other_version = ObjectRef {
            api_version: "apps/v1beta2".into(),
            ..about.clone()
        };
        assert_eq!(object.uid_of(&other_version), Some("uid-web"));
        for other in [
            ObjectRef {
                name: "db".into(),
                ..about.clone()
            },
            ObjectRef {
                namespace: Some("other".into()),
                ..about.clone()
            },
            ObjectRef {
                namespace: None,
                ..about.clone()
            },
            ObjectRef {
                kind: "StatefulSet".into(),
                ..about.clone()
            },
            ObjectRef {
                api_version: "extensions/v1beta1".into(),
                ..about.clone()
            },
        ] {
            assert_eq!(object.uid_of(&other), None, "{other:?}");
        }
        let without_uid = ObjectMeta {
            uid: String::new(),
            ..object.clone()
        };
        assert_eq!(without_uid.uid_of(&about), None);
    }
}
