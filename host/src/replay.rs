//! `kubelisten replay`: recorded watch events (as `kubectl get -w --output-watch-events -o json`
//! prints them, one per line or pretty-printed) fed through the same [`Tracker`] and
//! [`Chain::dispatch`] the cluster watch uses.
//!
//! Replay makes a single attempt per event (no retries) and marks no event `initial`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dispatch::{CallRecord, Chain};
use crate::event::{EventError, ObjectMeta, ObjectStatus, Tracker, WatchErrorInfo, WatchType};

/// One document of the input, or why it could not be read.
#[derive(Debug)]
pub enum InputItem {
    /// A watch event.
    Event {
        /// 1-based line where the document starts.
        line: usize,
        /// `ADDED`, `MODIFIED`, `DELETED`, `ERROR` or `BOOKMARK`.
        ty: String,
        /// The `object` field as JSON text, exactly as in the input.
        object: Box<RawValue>,
    },
    /// A document that is not a readable watch event.
    Malformed {
        /// 1-based line where the document starts.
        line: usize,
        /// What is wrong.
        error: String,
    },
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "type")]
    ty: String,
    object: Box<RawValue>,
}

/// Splits `text` into watch-event documents. A malformed document is reported with its line and
/// reading resumes at the next line that starts a document (`{` in column 0), so one bad line
/// loses nothing else.
pub fn parse_events(text: &str) -> Vec<InputItem> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |offset: usize| line_starts.partition_point(|&s| s <= offset);
    // Offset of the first line after `line` (1-based) that starts with `{`.
    let next_doc = |line: usize| {
        line_starts[line.min(line_starts.len())..]
            .iter()
            .copied()
            .find(|&s| text[s..].starts_with('{'))
    };

    let mut items = Vec::new();
    let mut pos = 0;
    while let Some(skip) = text[pos..].find(|c: char| !c.is_whitespace()) {
        pos += skip;
        let line = line_of(pos);
        let boundary = next_doc(line);
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<&RawValue>();
        let parsed = stream.next();
        let end = pos + stream.byte_offset();
        let overran = boundary.is_some_and(|b| end > b);
        match parsed {
            Some(Ok(raw)) if !overran => {
                items.push(match serde_json::from_str::<Doc>(raw.get()) {
                    Ok(doc) if is_known_type(&doc.ty) => InputItem::Event {
                        line,
                        ty: doc.ty,
                        object: doc.object,
                    },
                    Ok(doc) => InputItem::Malformed {
                        line,
                        error: format!("unknown event type {:?}", doc.ty),
                    },
                    Err(e) => InputItem::Malformed {
                        line,
                        error: format!("not a watch event: {e}"),
                    },
                });
                pos = end;
                continue;
            }
            Some(Err(e)) if !overran => items.push(InputItem::Malformed {
                line,
                error: format!(
                    "invalid JSON at line {} column {}: {e}",
                    line + e.line() - 1,
                    e.column()
                ),
            }),
            None => break,
            _ => items.push(InputItem::Malformed {
                line,
                error: format!(
                    "incomplete JSON document (the next one starts at line {})",
                    line_of(boundary.unwrap_or(pos))
                ),
            }),
        }
        match boundary {
            Some(b) => pos = b,
            None => break,
        }
    }
    items
}

fn is_known_type(ty: &str) -> bool {
    matches!(ty, "ADDED" | "MODIFIED" | "DELETED" | "ERROR" | "BOOKMARK")
}

/// One listener call made by the replay, with where its event came from.
#[derive(Debug, Clone)]
pub struct ReplayCall {
    /// Input line of the event.
    pub line: usize,
    /// The watch event type.
    pub ty: String,
    /// `namespace/name` of the object (the watch for `ERROR`).
    pub object: String,
    /// The call.
    pub record: CallRecord,
}

impl ReplayCall {
    /// The call as one JSON object (the `-o json` line).
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.record;
        let mut v = serde_json::json!({
            "line": self.line,
            "type": self.ty,
            "object": self.object,
            "listener": &*r.listener,
            "mode": r.mode.as_str(),
            "export": r.export.as_str(),
            "outcome": r.outcome.label(),
            "message": r.outcome.message(),
            "duration_us": u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
        });
        if let Some(kind) = r.outcome.trap_kind() {
            v["trap"] = kind.as_str().into();
        }
        v
    }

    /// The call as one human-readable line.
    pub fn to_text(&self) -> String {
        let r = &self.record;
        let mut s = format!(
            "line {:<4} {:<8} {:<30} {:<14} {:<9} {:<8} {:<7}",
            self.line,
            self.ty,
            self.object,
            &*r.listener,
            r.mode.as_str(),
            r.export.as_str(),
            r.outcome.label()
        );
        if let Some(kind) = r.outcome.trap_kind() {
            s.push_str(&format!(" trap={kind}"));
        }
        s.push_str(&format!(" {}µs", r.duration.as_micros()));
        if !r.outcome.message().is_empty() {
            s.push_str(&format!(" {:?}", r.outcome.message()));
        }
        s
    }
}

/// Totals of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events dispatched (create/update/delete and errors).
    pub events: usize,
    /// Listener calls made.
    pub calls: usize,
    /// Calls by outcome label.
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Traps by kind.
    pub traps: BTreeMap<&'static str, usize>,
    /// Events whose chain failed.
    pub failed_events: usize,
    /// Malformed documents, with their lines and errors.
    pub malformed: Vec<(usize, String)>,
    /// Deliveries dropped as duplicates (same resourceVersion twice).
    pub duplicates: usize,
    /// Bookmarks skipped.
    pub bookmarks: usize,
}

impl Summary {
    /// Whether anything failed: a malformed document, a listener error, trap or skipped call.
    pub fn has_failures(&self) -> bool {
        !self.malformed.is_empty() || self.outcomes.iter().any(|(k, n)| *k != "ok" && *n > 0)
    }

    fn count(&mut self, record: &CallRecord) {
        self.calls += 1;
        *self.outcomes.entry(record.outcome.label()).or_default() += 1;
        if let Some(kind) = record.outcome.trap_kind() {
            *self.traps.entry(kind.as_str()).or_default() += 1;
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |m: &BTreeMap<&str, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(
            f,
            "summary: events={} calls={} [{}] traps=[{}] failed_events={} malformed={} duplicates={} bookmarks={}",
            self.events,
            self.calls,
            join(&self.outcomes),
            join(&self.traps),
            self.failed_events,
            self.malformed.len(),
            self.duplicates,
            self.bookmarks
        )
    }
}

/// Replays `items` through `chain`, calling `on_call` for every listener call as it happens and
/// `on_malformed` for every unreadable document.
pub fn replay(
    chain: &Chain,
    items: Vec<InputItem>,
    mut on_call: impl FnMut(&ReplayCall),
    mut on_malformed: impl FnMut(usize, &str),
) -> Summary {
    let mut summary = Summary::default();
    let mut tracker = Tracker::default();
    let mut malformed = |summary: &mut Summary, line: usize, error: String| {
        on_malformed(line, &error);
        summary.malformed.push((line, error));
    };
    for item in items {
        let (line, ty, object) = match item {
            InputItem::Malformed { line, error } => {
                malformed(&mut summary, line, error);
                continue;
            }
            InputItem::Event { line, ty, object } => (line, ty, object),
        };
        let watch_type = match ty.as_str() {
            "ADDED" => WatchType::Added,
            "MODIFIED" => WatchType::Modified,
            "DELETED" => WatchType::Deleted,
            "BOOKMARK" => {
                summary.bookmarks += 1;
                continue;
            }
            _ => {
                let status: serde_json::Value =
                    serde_json::from_str(object.get()).unwrap_or_default();
                summary.events += 1;
                let records = chain.dispatch_error(&WatchErrorInfo::from_status(&status), "replay");
                if records.iter().any(|r| !r.outcome.is_ok()) {
                    summary.failed_events += 1;
                }
                for record in records {
                    summary.count(&record);
                    on_call(&ReplayCall {
                        line,
                        ty: ty.clone(),
                        object: "-".into(),
                        record,
                    });
                }
                continue;
            }
        };
        let parsed = serde_json::from_str::<serde_json::Value>(object.get())
            .map_err(|e| EventError::NotJson(e.to_string()))
            .and_then(|value| Ok((ObjectMeta::from_value(&value)?, ObjectStatus::of(&value))));
        let (meta, status) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                malformed(&mut summary, line, e.to_string());
                continue;
            }
        };
        let object_ref = meta.object_ref();
        let raw: Arc<str> = Arc::from(object.get());
        let Some(event) = tracker.apply(watch_type, raw, meta, status, false) else {
            summary.duplicates += 1;
            continue;
        };
        summary.events += 1;
        let report = chain.dispatch(&event);
        if !report.succeeded() {
            summary.failed_events += 1;
        }
        for record in report.calls {
            summary.count(&record);
            on_call(&ReplayCall {
                line,
                ty: ty.clone(),
                object: object_ref.clone(),
                record,
            });
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(items: &[InputItem]) -> Vec<(usize, bool)> {
        items
            .iter()
            .map(|i| match i {
                InputItem::Event { line, .. } => (*line, true),
                InputItem::Malformed { line, .. } => (*line, false),
            })
            .collect()
    }

    #[test]
    fn one_per_line_with_a_malformed_line() {
        let text = "{\"type\":\"ADDED\",\"object\":{\"a\":1}}\n{\"type\":\"ADDED\",\"object\":{\"a\":\n{\"type\":\"DELETED\",\"object\":{}}\n\nnot json\n{\"type\":\"NOPE\",\"object\":{}}\n{\"kind\":1}\n";
        let items = parse_events(text);
        assert_eq!(
            lines(&items),
            vec![
                (1, true),
                (2, false),
                (3, true),
                (5, false),
                (6, false),
                (7, false)
            ]
        );
    }

    #[test]
    fn pretty_printed_and_concatenated() {
        let text = "{\n    \"type\": \"ADDED\",\n    \"object\": {\n        \"a\": 1\n    }\n}\n{\n  \"type\": \"MODIFIED\",\n  \"object\": {}\n}{\"type\":\"DELETED\",\"object\":{}}\n";
        let items = parse_events(text);
        assert_eq!(lines(&items), vec![(1, true), (7, true), (10, true)]);
        let InputItem::Event { object, .. } = &items[0] else {
            panic!()
        };
        assert_eq!(object.get(), "{\n        \"a\": 1\n    }");
    }

    #[test]
    fn truncated_last_document() {
        let items = parse_events("{\"type\":\"ADDED\",\"object\":{}}\n{\"type\":");
        assert_eq!(lines(&items), vec![(1, true), (2, false)]);
    }
}
